"""The uncompressed stream of a gzip or zstd object, read forward from any offset.

A compressed file's offsets (the ledger's ``next_offset``, rejects' ``byte_offset``) are
in its uncompressed stream, so a committed offset is still the start of a line. Neither
format can be entered in the middle, so a read from anywhere but where the last one ended
(a resume in a later run) decompresses the object again from its start, dropping what
comes before the offset: docs/performance.md measures what that costs against the
budget. Arrow's decompressing stream (pyarrow, already a dependency) reads concatenated
gzip members and zstd frames whole, tells a stream cut short from one that ended, and
hands out bounded reads however far a block expands.
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa

from kmdagster.s3.objects import UnreadableFileError
from kmdagster.stages import timed

# Past this, a compressed file is taken for a decompression bomb (a source may raise it).
DEFAULT_MAX_UNCOMPRESSED_BYTES = 64 * 1024**3
_SKIP_READ_BYTES = 4 * 1024 * 1024  # what a resume decompresses and drops at a time


class ByteSource(Protocol):
    """Bytes read forward from an offset: an object, or its uncompressed stream."""

    def read(self, position: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` (at least one) from ``position``; empty at the end."""
        ...

    def close(self) -> None: ...

    @property
    def read_offset(self) -> int:
        """Bytes of the object read so far."""
        ...


class _ObjectFile:
    """The object as the read-only file Arrow's stream pulls from. An S3 error raised in
    the pull is kept: Arrow reports its own error, the original is raised instead."""

    def __init__(self, objects: ByteSource) -> None:
        self._objects = objects
        self.position = 0
        self.error: BaseException | None = None
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 62
        try:
            block = self._objects.read(self.position, size)
        except BaseException as exc:
            self.error = exc
            raise
        self.position += len(block)
        return block

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.closed = True


class DecompressedStream:
    """The uncompressed bytes of a ``gzip`` or ``zstd`` object, at most ``max_bytes``."""

    def __init__(
        self, objects: ByteSource, where: str, compression: str, max_bytes: int | None = None
    ) -> None:
        self._objects = objects
        self._where = where  # s3://bucket/key, for errors
        self._compression = compression
        self._max_bytes = DEFAULT_MAX_UNCOMPRESSED_BYTES if max_bytes is None else max_bytes
        self._file: _ObjectFile | None = None
        self._stream: pa.CompressedInputStream | None = None
        self._position = 0  # uncompressed offset of the stream's next byte

    @property
    def read_offset(self) -> int:
        return self._file.position if self._file is not None else 0

    def read(self, position: int, max_bytes: int) -> bytes:
        with timed("decompress"):
            return self._read_at(position, max_bytes)

    def _read_at(self, position: int, max_bytes: int) -> bytes:
        if self._stream is None or position != self._position:
            self._restart()
            while self._position < position:  # a resume: drop what was committed before
                if not self._read(min(position - self._position, _SKIP_READ_BYTES)):
                    raise UnreadableFileError(
                        f"{self._where} ends at uncompressed byte {self._position:,}, "
                        f"before the committed offset {position:,}: it is not the file "
                        "imported so far"
                    )
        return self._read(max_bytes)

    def close(self) -> None:
        self._objects.close()
        self._stream = self._file = None

    def _restart(self) -> None:
        self.close()
        self._file = _ObjectFile(self._objects)
        self._stream = pa.CompressedInputStream(
            pa.PythonFile(self._file, mode="r"), self._compression
        )
        self._position = 0

    def _read(self, max_bytes: int) -> bytes:
        assert self._stream is not None and self._file is not None
        try:
            block = self._stream.read(max_bytes)
        except (OSError, pa.ArrowException) as exc:
            if self._file.error is not None:  # the S3 read's own error, not Arrow's report
                raise self._file.error from None
            raise self._stream_error(str(exc)) from exc
        self._position += len(block)
        if self._position > self._max_bytes:
            raise UnreadableFileError(
                f"{self._where} expands past {self._max_bytes:,} bytes uncompressed "
                "(sources[].max_uncompressed_bytes), so it is taken for a decompression "
                "bomb and not read on. If the file is genuine, raise that setting"
            )
        return block

    def _stream_error(self, said: str) -> UnreadableFileError:
        at = f"uncompressed byte {self._position:,}"
        if "truncated" in said.lower():
            return UnreadableFileError(
                f"{self._where} is cut short: its {self._compression} stream stops at {at} "
                "before it ends (an upload that did not finish?). The whole lines before the "
                "cut are loaded; upload the whole file again to load the rest",
                cut_short_at=self._position,
            )
        return UnreadableFileError(
            f"{self._where} is not a valid {self._compression} stream after {at} "
            f"({said.strip()}); compress the file again with gzip or zstd and upload it"
        )
