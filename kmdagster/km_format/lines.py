"""Turn a block of whole lines (bytes) into a polars frame of numbered text lines.

The lines are views into the block's own buffer, cut at newline offsets found by polars:
no Python object per line. Undecodable bytes (rare) are found by one decoding pass in C,
skipped for an all-ASCII block; only the lines that hold them are decoded again in
Python, with U+FFFD for those bytes.
"""

from __future__ import annotations

import codecs
import threading

import polars as pl
import pyarrow as pa

from kmdagster.km_format.columns import constant, true_positions

UTF8_BOM = b"\xef\xbb\xbf"
LINES_SCHEMA = {
    "line_no": pl.Int64,
    "byte_offset": pl.Int64,
    "text": pl.String,
    "invalid_utf8": pl.Boolean,
}

_errors = threading.local()
DECODE_RUN_BYTES = 64 * 1024


def _record_decode_error(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    _errors.spans.append((error.start, error.end))
    return "", error.end  # no U+FFFD: an ASCII block then decodes at ASCII speed


codecs.register_error("kmdagster-record", _record_decode_error)


def count_lines(data: bytes) -> int:
    """How many lines ``decode_lines`` finds in ``data``, without decoding it.

    Counted by polars over a view of the bytes: ten times ``bytes.count``'s speed, and
    without the GIL, which the splitting threads need between their polars calls.
    """
    if not data:
        return 0
    newlines = (_byte_values(pa.py_buffer(data), len(data)) == ord("\n")).sum()
    return int(newlines) + (0 if data.endswith(b"\n") else 1)


def _byte_values(buffer: pa.Buffer, size: int) -> pl.Series:
    """The bytes of ``buffer`` as a UInt8 column, not copied."""
    return pl.Series(pa.Array.from_buffers(pa.uint8(), size, [None, buffer]))


def decode_lines(data: bytes, first_line_no: int, first_byte_offset: int = 0) -> pl.DataFrame:
    """Split ``data`` (whole lines, the last newline optional) into numbered lines.

    Returns columns ``line_no`` (Int64, counting from ``first_line_no``), ``byte_offset``
    (Int64: where the line starts in the file, ``data`` starting at ``first_byte_offset``),
    ``text``
    (String; the newline and a trailing CR removed, undecodable bytes read as U+FFFD) and
    ``invalid_utf8`` (Boolean). An empty block has no lines.
    """
    if not data:
        return pl.DataFrame(schema=LINES_SCHEMA)
    bad_spans = [] if data.isascii() else _undecodable_spans(data)
    # A block with undecodable bytes is cut as bytes, which may hold anything; its bad
    # lines are swapped for their decoded text before polars takes it all as text.
    offsets, text = _line_views(data, pa.large_binary() if bad_spans else pa.large_string())
    invalid = constant(False, len(text), pl.Boolean)
    if bad_spans:
        bad_lines = (
            offsets.search_sorted(pl.Series([start for start, _ in bad_spans]), side="right") - 1
        ).unique()
        invalid = invalid.scatter(bad_lines, True)
        decoded = _decoded_with_replacements(data, offsets, bad_lines).cast(pl.Binary)
        text = text.scatter(bad_lines, decoded).cast(pl.String)
    text = text.str.strip_suffix("\n")
    if b"\r" in data:
        text = text.str.strip_suffix("\r")
    return pl.DataFrame(
        {
            "line_no": pl.int_range(
                first_line_no, first_line_no + len(text), dtype=pl.Int64, eager=True
            ),
            "byte_offset": offsets.slice(0, len(text)) + first_byte_offset,
            "text": text,
            "invalid_utf8": invalid,
        }
    )


def _undecodable_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every undecodable byte sequence in ``data``.

    Decoded in runs of whole lines of about ``DECODE_RUN_BYTES``: a strict decode is C's
    fast path, and only a run it refuses is decoded again recording each error (a
    Python call per undecodable sequence, and about four times slower throughout).
    """
    spans: list[tuple[int, int]] = []
    view = memoryview(data)
    start = 0
    while start < len(data):
        newline = data.find(b"\n", start + DECODE_RUN_BYTES)
        end = len(data) if newline < 0 else newline + 1
        try:
            codecs.utf_8_decode(view[start:end], "strict", True)
        except UnicodeDecodeError:
            _errors.spans = []
            codecs.utf_8_decode(view[start:end], "kmdagster-record", True)
            spans += [(start + first, start + last) for first, last in _errors.spans]
        start = end
    return spans


def _line_views(data: bytes, line_type: pa.DataType) -> tuple[pl.Series, pl.Series]:
    """(line offsets, lines with their newline) of ``data``, as ``line_type``: large
    string only for valid UTF-8, else large binary.

    Line ``i`` is ``data[offsets[i]:offsets[i + 1]]``; the lines are views of ``data``'s
    buffer: the bytes are not copied.
    """
    buffer = pa.py_buffer(data)
    byte_values = _byte_values(buffer, len(data))
    line_ends = true_positions(byte_values == ord("\n")).cast(pl.Int64) + 1
    if not data.endswith(b"\n"):
        line_ends.append(pl.Series([len(data)], dtype=pl.Int64))
    offsets = pl.concat([pl.Series([0], dtype=pl.Int64), line_ends]).rechunk()
    arrow_offsets = offsets.to_arrow()
    lines = pa.Array.from_buffers(
        line_type,
        len(line_ends),
        [None, arrow_offsets.buffers()[1], buffer],
        offset=arrow_offsets.offset,
    )
    return offsets, pl.Series("text", lines)


def _decoded_with_replacements(data: bytes, offsets: pl.Series, lines: pl.Series) -> pl.Series:
    """The text of the given lines (indexes), undecodable bytes read as U+FFFD."""
    starts, ends = offsets.gather(lines).to_list(), offsets.gather(lines + 1).to_list()
    texts = [
        data[start:end].decode("utf-8", errors="replace")
        for start, end in zip(starts, ends, strict=True)
    ]
    return pl.Series(texts, dtype=pl.String)
