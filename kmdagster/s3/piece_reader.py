"""Read an S3 object as line-aligned pieces with ranged GETs pinned to its ETag.

The sizes of an import, largest first (the README uses the same words):

- a **request** is one streaming ranged GET, up to ``REQUEST_BYTES`` (64 MB);
- a **chunk** is what one warehouse transaction commits: the pieces up to the source's
  ``chunk_bytes`` (48 MB by default);
- a **piece** is the whole lines split at once, about ``PIECE_BYTES`` (2 MB), cut from a
  request as it streams;
- a **stream read** is one ``read()`` of the response body, up to ``STREAM_READ_BYTES``.

A piece always ends on a line boundary (or at the end of the object), so a committed
offset is always the start of a line. Memory per piece is ``piece_bytes`` plus, at
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

from kmdagster.km_format.lines import UTF8_BOM
from kmdagster.s3.objects import (
    S3AccessError,
    describe_client_error,
    is_precondition_failure,
)

BODY_READ_ATTEMPTS = 6
REQUEST_BYTES = 64 * 1024 * 1024
# The split's working memory is ~15-20x its input, so memory is bounded by the pieces in
# hand, not by the chunk.
PIECE_BYTES = 2 * 1024 * 1024
STREAM_READ_BYTES = 1024 * 1024
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
class Piece:
    start: int
    end: int  # exclusive: the next piece starts here
    data: bytes  # whole lines; a UTF-8 BOM at the start of the object is already removed


class PieceReader:
    """Line-aligned pieces of one object version, read in order from ranged GETs.

    Consecutive pieces come from one streaming GET of up to ``request_bytes``: a request
    costs the server a lookup and, on a chunked store, reading whole stored chunks, so
    one per piece would cost it several times the bytes served (measured on SeaweedFS:
    15 ms of CPU per MB at 2 MB ranges, 4 ms streaming). Memory is one piece plus the
    partial line after it. Not thread-safe: one thread reads, then calls ``close()``.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        etag: str,
        size: int,
        piece_bytes: int,
        request_bytes: int = REQUEST_BYTES,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.etag = etag
        self.size = size
        self.piece_bytes = piece_bytes
        self.request_bytes = max(request_bytes, piece_bytes)
        self._received = bytearray()  # bytes from ``_received_start`` not yet handed out
        self._received_start = -1
        self._body: Any = None  # the open streaming body, if any
        self._body_end = 0  # where its range ends (exclusive)

    def __enter__(self) -> PieceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_piece(self, start: int) -> Piece:
        """The whole lines from ``start``: about ``piece_bytes`` of them, at least one."""
        if start >= self.size:
            return Piece(start=start, end=start, data=b"")
        if start != self._received_start:  # not where the last piece ended: a new stream
            self.close()
            self._received, self._received_start = bytearray(), start
        end = min(start + self.piece_bytes, self.size)
        self._receive_until(end)
        received = self._received
        cut = received.rfind(b"\n") if end < self.size else len(received) - 1
        while cut < 0:  # one line longer than a piece: keep reading until it ends
            searched = len(received)
            end = min(end + self.piece_bytes, self.size)
            self._receive_until(end)
            cut = received.find(b"\n", searched)
            if cut < 0 and end >= self.size:
                cut = len(received) - 1
        skip = len(UTF8_BOM) if start == 0 and received.startswith(UTF8_BOM) else 0
        # One copy of the whole lines out of the receive buffer: a piece is megabytes.
        data = bytes(memoryview(received)[skip : cut + 1])
        del received[: cut + 1]  # the partial line after them stays for the next piece
        self._received_start = start + cut + 1
        return Piece(start=start, end=start + cut + 1, data=data)

    def close(self) -> None:
        """Drop the open request, if any (its connection is not reused)."""
        if self._body is not None:
            body, self._body = self._body, None
            body.close()

    def _receive_until(self, end: int) -> None:
        """Append the object's bytes up to ``end`` to the buffer. A body that breaks off
        mid-transfer is resumed from the last byte received (botocore retries failed
        requests; this retries broken bodies)."""
        failures = 0
        while (position := self._received_start + len(self._received)) < end:
            try:
                body = self._body if self._body is not None else self._open(position)
                block = body.read(min(end - position, STREAM_READ_BYTES))
            except BODY_ERRORS:
                self.close()
                failures += 1
                if failures >= BODY_READ_ATTEMPTS:
                    raise
                time.sleep(0.1 * 2**failures)
                continue
            if block:
                self._received += block
            elif position < self._body_end:  # the server ended the body early
                self.close()
                failures += 1
                if failures >= BODY_READ_ATTEMPTS:
                    raise S3AccessError(
                        f"GetObject on s3://{self.bucket}/{self.key} kept returning short "
                        f"bodies from byte {position}; retry the run"
                    )
            else:  # this request's range is done; the next one starts here
                self.close()

    def _open(self, start: int) -> Any:
        """Open (and return) a streaming body of this exact version from ``start``."""
        end = min(start + self.request_bytes, self.size)
        try:
            response = self._client.get_object(
                Bucket=self.bucket,
                Key=self.key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=self.etag,
            )
        except ClientError as exc:
            if is_precondition_failure(exc):
                raise FileChangedError(
                    f"s3://{self.bucket}/{self.key} changed during its import (it no longer "
                    f"has ETag {self.etag}); rows already loaded stay attributed to that "
                    "ETag, and the new content is imported as a new file at the next tick"
                ) from exc
            raise S3AccessError(
                describe_client_error(exc, "GetObject", self.bucket, self.key)
            ) from exc
        served = _served_range(response, self.size)
        if served != (start, end):
            response["Body"].close()
            said = f"bytes {served[0]}-{served[1] - 1}" if served else "no byte range"
            raise S3AccessError(
                f"GetObject on s3://{self.bucket}/{self.key} answered the range bytes "
                f"{start}-{end - 1} with {said}; the server ignored the Range header. Reach "
                "the bucket directly, not through a proxy or gateway that drops it"
            )
        self._body, self._body_end = response["Body"], end
        return self._body


def _served_range(response: dict[str, Any], size: int) -> tuple[int, int] | None:
    """(start, end) of the bytes a GET response holds, from Content-Range; without it,
    the whole object when Content-Length says so, else None (unknown)."""
    content_range = response.get("ContentRange")
    if content_range:
        first, _, last = content_range.removeprefix("bytes ").partition("/")[0].partition("-")
        if first.isdigit() and last.isdigit():
            return int(first), int(last) + 1
        return None
    return (0, size) if response.get("ContentLength") == size else None
