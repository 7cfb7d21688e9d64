"""Read an S3 object as line-aligned chunks with ranged GETs pinned to its ETag.

A chunk always ends on a line boundary (or at the end of the object), so a committed
offset is always the start of a line. Memory per chunk is ``chunk_bytes`` plus, at
worst, one line longer than that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError
from urllib3.exceptions import ProtocolError

from kmdagster.format.lines import UTF8_BOM
from kmdagster.storage.s3_objects import S3AccessError, describe_client_error

BODY_READ_ATTEMPTS = 4


class FileChangedError(RuntimeError):
    """The object's ETag no longer matches the version being imported."""


@dataclass(frozen=True)
class Chunk:
    start: int
    end: int  # exclusive: the next chunk starts here
    data: bytes  # whole lines; a UTF-8 BOM at the start of the object is already removed


class LineChunkReader:
    """Ranged, ETag-pinned reads of one object version."""

    def __init__(
        self, client: Any, bucket: str, key: str, etag: str, size: int, chunk_bytes: int
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.etag = etag
        self.size = size
        self.chunk_bytes = chunk_bytes

    def read_chunk(self, start: int) -> Chunk:
        """The whole lines from ``start``: about ``chunk_bytes`` of them, at least one."""
        if start >= self.size:
            return Chunk(start=start, end=start, data=b"")
        end = min(start + self.chunk_bytes, self.size)
        data = self._get_range(start, end)
        cut = data.rfind(b"\n") if end < self.size else len(data) - 1
        parts = [data]
        while cut < 0:  # one line longer than a chunk: keep reading until it ends
            more_end = min(end + self.chunk_bytes, self.size)
            more = self._get_range(end, more_end)
            newline = more.find(b"\n")
            parts.append(more)
            end = more_end
            if newline >= 0:
                cut = sum(len(p) for p in parts[:-1]) + newline
            elif end >= self.size:
                cut = sum(len(p) for p in parts) - 1
        data = b"".join(parts) if len(parts) > 1 else data
        data = data[: cut + 1]
        chunk_end = start + len(data)
        if start == 0 and data.startswith(UTF8_BOM):
            data = data[len(UTF8_BOM) :]
        return Chunk(start=start, end=chunk_end, data=data)

    def _get_range(self, start: int, end: int) -> bytes:
        """Bytes [start, end), retrying a body that breaks off mid-transfer."""
        if end <= start:
            return b""
        for attempt in range(1, BODY_READ_ATTEMPTS + 1):
            try:
                response = self._client.get_object(
                    Bucket=self.bucket,
                    Key=self.key,
                    Range=f"bytes={start}-{end - 1}",
                    IfMatch=self.etag,
                )
                body = response["Body"].read()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    raise FileChangedError(
                        f"s3://{self.bucket}/{self.key} changed during its import (it no longer "
                        f"has ETag {self.etag}); rows already loaded stay attributed to that "
                        "ETag, and the new content is imported as a new file at the next tick"
                    ) from exc
                raise S3AccessError(
                    describe_client_error(exc, "GetObject", self.bucket, self.key)
                ) from exc
            except (ConnectionError, ReadTimeoutError, ProtocolError):
                if attempt == BODY_READ_ATTEMPTS:
                    raise
                time.sleep(0.2 * 2**attempt)
                continue
            if len(body) == end - start:
                return body
            if attempt == BODY_READ_ATTEMPTS:
                raise S3AccessError(
                    f"GetObject on s3://{self.bucket}/{self.key} returned {len(body)} bytes "
                    f"for a range of {end - start}; retry the run"
                )
        raise AssertionError("unreachable")
