"""Read an S3 object as line-aligned pieces with ranged GETs pinned to its ETag.

The sizes of an import, largest first (docs/architecture.md uses the same words):

- a **request** is one streaming ranged GET, up to ``REQUEST_BYTES`` (64 MB);
- a **chunk** is what one warehouse transaction commits: the pieces up to the source's
  ``chunk_bytes`` (48 MB by default);
- a **piece** is the whole lines split at once, about ``PIECE_BYTES`` (2 MB), cut from a
  request as it streams (from its uncompressed stream, for a compressed object);
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
from kmdagster.s3.decompress import ByteSource, DecompressedStream
from kmdagster.s3.objects import (
    FileChangedError,
    S3AccessError,
    UnreadableFileError,
    describe_client_error,
    is_precondition_failure,
)

__all__ = ["FileChangedError", "ObjectStream", "Piece", "PieceReader", "UnreadableFileError"]

BODY_READ_ATTEMPTS = 6
REQUEST_BYTES = 64 * 1024 * 1024
# The split's working memory is ~15-20x its input, so memory is bounded by the pieces in
# hand, not by the chunk.
PIECE_BYTES = 2 * 1024 * 1024
STREAM_READ_BYTES = 1024 * 1024
# No KISSmetrics line comes near this (a value holds at most 8 KB): a longer one means the
# file is not JSON lines, and reading on would hold all of it in memory.
MAX_LINE_BYTES = 64 * 1024 * 1024
# What a body broken off mid-transfer raises, depending on where the connection died.
BODY_ERRORS = (
    ConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
    IncompleteReadError,
    ProtocolError,
    OSError,
)


@dataclass(frozen=True)
class Piece:
    start: int
    end: int  # exclusive: the next piece starts here
    data: bytes  # whole lines; a UTF-8 BOM at the start of the object is already removed
    last: bool = False  # the file ends with it: nothing is left to read
    cut_short: bool = False  # the object stops after it, before its compressed stream does
    read_offset: int = 0  # bytes of the object read to reach ``end`` (compressed: about)


class ObjectStream:
    """The bytes of one object version, read forward from any offset.

    Consecutive reads come from one streaming GET of up to ``request_bytes``: a request
    costs the server a lookup and, on a chunked store, reading whole stored chunks, so
    one per piece would cost it several times the bytes served (measured on SeaweedFS:
    15 ms of CPU per MB at 2 MB ranges, 4 ms streaming). Every GET is pinned to the
    ETag; a body that breaks off mid-transfer is resumed from the last byte received
    (botocore retries failed requests; this retries broken bodies). Not thread-safe.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        etag: str,
        size: int,
        request_bytes: int = REQUEST_BYTES,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.etag = etag
        self.size = size
        self.request_bytes = request_bytes
        self._body: Any = None  # the open streaming body, if any
        self._position = 0  # where its next byte is
        self._body_end = 0  # where its range ends (exclusive)

    def read(self, position: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` (at least one) from ``position``; empty at the end."""
        failures = 0
        while position < self.size:
            try:
                body = self._body
                if body is None or position != self._position:
                    body = self._open(position)
                remaining = self._body_end - position
                block = body.read(min(max_bytes, STREAM_READ_BYTES, remaining))
            except BODY_ERRORS:
                self.close()
                failures += 1
                if failures >= BODY_READ_ATTEMPTS:
                    raise
                time.sleep(0.1 * 2**failures)
                continue
            if block:
                self._position = position + len(block)
                if self._position >= self._body_end:  # the next read opens the next range
                    self.close()
                return block
            self.close()  # the server ended the body early
            failures += 1
            if failures >= BODY_READ_ATTEMPTS:
                raise S3AccessError(
                    f"GetObject on s3://{self.bucket}/{self.key} kept returning short "
                    f"bodies from byte {position}; retry the run"
                )
        return b""

    def close(self) -> None:
        """Drop the open request, if any (its connection is not reused)."""
        if self._body is not None:
            body, self._body = self._body, None
            body.close()

    def _open(self, start: int) -> Any:
        """Open (and return) a streaming body of this exact version from ``start``."""
        self.close()
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
                f"{describe_client_error(exc, 'GetObject', self.bucket, self.key)}, reading "
                f"from byte {start:,} of {self.size:,}; what was committed before stays, and "
                "the next run resumes from the last committed chunk"
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
        self._body, self._position, self._body_end = response["Body"], start, end
        return self._body

    @property
    def read_offset(self) -> int:
        """Where the next byte read from the object is."""
        return self._position


class PieceReader:
    """Line-aligned pieces of one object version, read in order.

    Offsets are in the file's lines as the import sees them: the object's bytes, or for
    a compressed object (``compression``) its uncompressed stream, whose pieces come from
    reading the object from its start (``s3.decompress``). Memory is one piece plus the
    partial line after it; a line longer than ``MAX_LINE_BYTES`` stops the read. Not
    thread-safe: one thread reads, then calls ``close()``.
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
        compression: str | None = None,
        max_uncompressed_bytes: int | None = None,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.size = size  # the object's
        self.piece_bytes = piece_bytes
        objects = ObjectStream(client, bucket, key, etag, size, max(request_bytes, piece_bytes))
        self._source: ByteSource = objects
        self._compressed = compression is not None
        if compression is not None:
            self._source = DecompressedStream(
                objects, f"s3://{bucket}/{key}", compression, max_uncompressed_bytes
            )
        self._received = bytearray()  # bytes from ``_received_start`` not yet handed out
        self._received_start = -1
        self._at_end = False  # the source has nothing after ``_received``
        self._cut_error: UnreadableFileError | None = None  # raised by the next read

    def __enter__(self) -> PieceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_piece(self, start: int) -> Piece:
        """The whole lines from ``start``: about ``piece_bytes`` of them, at least one.

        Where a compressed object stops before its stream ends, the whole lines before the
        cut come as a piece ``cut_short``, and the next read raises the error.
        """
        if self._cut_error is not None:
            raise self._cut_error
        if start != self._received_start:  # not where the last piece ended
            self._received, self._received_start, self._at_end = bytearray(), start, False
        received = self._received
        try:
            self._receive(self.piece_bytes)
            cut = received.rfind(b"\n") if not self._at_end else len(received) - 1
            while cut < 0 and not self._at_end:  # a line longer than a piece: read on
                searched = len(received)
                if searched > MAX_LINE_BYTES:
                    raise UnreadableFileError(
                        f"s3://{self.bucket}/{self.key}: the line at byte {start} is longer "
                        f"than {MAX_LINE_BYTES:,} bytes without a line end; no KISSmetrics "
                        "line is (a value holds at most 8 KB). The file is not JSON lines: "
                        "fix it and upload it again"
                    )
                self._receive(searched + self.piece_bytes)
                cut = received.find(b"\n", searched)
            if cut < 0:  # the file's last line, without a line end
                cut = len(received) - 1
        except UnreadableFileError as exc:
            cut = received.rfind(b"\n")
            if exc.cut_short_at is None or cut < 0:
                raise
            self._cut_error = exc  # the whole lines before the cut still load
        skip = len(UTF8_BOM) if start == 0 and received.startswith(UTF8_BOM) else 0
        # One copy of the whole lines out of the receive buffer: a piece is megabytes.
        data = bytes(memoryview(received)[skip : cut + 1])
        del received[: cut + 1]  # the partial line after them stays for the next piece
        self._received_start = start + cut + 1
        return Piece(
            start=start,
            end=self._received_start,
            data=data,
            last=self._at_end and not received,
            cut_short=self._cut_error is not None,
            # A plain file's offsets are the object's; a compressed one's, about.
            read_offset=self._source.read_offset if self._compressed else self._received_start,
        )

    def close(self) -> None:
        """Drop the open request, if any (its connection is not reused)."""
        self._source.close()

    def _receive(self, length: int) -> None:
        """Read from the source until ``length`` bytes are in hand or it ends."""
        while not self._at_end and len(self._received) < length:
            position = self._received_start + len(self._received)
            block = self._source.read(position, length - len(self._received))
            if block:
                self._received += block
            else:
                self._at_end = True


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
