"""Read an S3 object as line-aligned chunks with ranged GETs pinned to its ETag.

A chunk always ends on a line boundary (or at the end of the object), so a committed
offset is always the start of a line. Memory per chunk is ``chunk_bytes`` plus, at
worst, one line longer than that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from urllib3.exceptions import ProtocolError

from kmdagster.format.lines import UTF8_BOM
from kmdagster.storage.s3_objects import S3AccessError, describe_client_error

BODY_READ_ATTEMPTS = 6
BODY_PIECE = 1024 * 1024
# What a body broken off mid-transfer raises, depending on where the connection died.
BODY_ERRORS = (
    ConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
    IncompleteReadError,
    ProtocolError,
    OSError,
)


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
        received = b"".join(parts) if len(parts) > 1 else data
        chunk_end = start + cut + 1
        skip = len(UTF8_BOM) if start == 0 and received.startswith(UTF8_BOM) else 0
        # One copy of the whole lines out of the receive buffer: a chunk is megabytes.
        return Chunk(start=start, end=chunk_end, data=bytes(memoryview(received)[skip : cut + 1]))

    def _get_range(self, start: int, end: int) -> bytearray:
        """Bytes [start, end). A body that breaks off mid-transfer is resumed from the
        last byte received (botocore retries failed requests; this retries broken bodies)."""
        received = bytearray()
        failures = 0
        while start + len(received) < end:
            try:
                for piece in self._open_range(start + len(received), end).iter_chunks(BODY_PIECE):
                    received += piece
            except BODY_ERRORS:
                failures += 1
                if failures >= BODY_READ_ATTEMPTS:
                    raise
                time.sleep(0.1 * 2**failures)
                continue
            if start + len(received) < end:  # the server ended the body early
                failures += 1
                if failures >= BODY_READ_ATTEMPTS:
                    raise S3AccessError(
                        f"GetObject on s3://{self.bucket}/{self.key} kept returning short "
                        f"bodies for bytes {start}-{end - 1}; retry the run"
                    )
        if len(received) > end - start:
            raise S3AccessError(
                f"GetObject on s3://{self.bucket}/{self.key} returned {len(received)} bytes "
                f"for a range of {end - start}; the server ignored the Range header"
            )
        return received

    def _open_range(self, start: int, end: int) -> Any:
        """The streaming body of bytes [start, end) of this exact version."""
        try:
            response = self._client.get_object(
                Bucket=self.bucket,
                Key=self.key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=self.etag,
            )
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
        return response["Body"]
