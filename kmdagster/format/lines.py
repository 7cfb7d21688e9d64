"""Turn a block of whole lines (bytes) into a polars frame of numbered text lines.

UTF-8 decoding happens once for the whole block in C; only the rare undecodable bytes
are visited in Python, to mark the lines that hold them.
"""

from __future__ import annotations

import codecs
import threading

import polars as pl

UTF8_BOM = b"\xef\xbb\xbf"

_errors = threading.local()


def _record_decode_error(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    _errors.offsets.append(error.start)
    return "\ufffd", error.end


codecs.register_error("kmdagster-record", _record_decode_error)


def count_lines(data: bytes) -> int:
    """How many lines ``decode_lines`` finds in ``data``, without decoding it."""
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def decode_lines(data: bytes, first_line_no: int) -> pl.DataFrame:
    """Split ``data`` (whole lines, the last newline optional) into numbered lines.

    Returns columns ``line_no`` (Int64, counting from ``first_line_no``), ``text``
    (String; a trailing CR is removed, undecodable bytes read as U+FFFD) and
    ``invalid_utf8`` (Boolean). An empty block has no lines.
    """
    _errors.offsets = []
    text = data.decode("utf-8", errors="kmdagster-record")
    bad_offsets: list[int] = _errors.offsets
    if text.endswith("\n"):
        text = text[:-1]
    elif not text:
        return pl.DataFrame(
            schema={"line_no": pl.Int64, "text": pl.String, "invalid_utf8": pl.Boolean}
        )
    # str.split in C and one Series build beat polars' split + explode here.
    lines = pl.Series("text", text.split("\n"), dtype=pl.String)
    if "\r" in text:
        lines = lines.str.strip_suffix("\r")
    frame = pl.DataFrame(
        {
            "line_no": pl.int_range(
                first_line_no, first_line_no + len(lines), dtype=pl.Int64, eager=True
            ),
            "text": lines,
        }
    )
    if not bad_offsets:
        return frame.with_columns(invalid_utf8=pl.lit(False))
    bad_indexes = _line_indexes_of_offsets(data, bad_offsets)
    return frame.with_columns(invalid_utf8=pl.int_range(pl.len()).is_in(bad_indexes))


def _line_indexes_of_offsets(data: bytes, offsets: list[int]) -> list[int]:
    """Index of the line that holds each byte offset; one pass over the data in total."""
    indexes: list[int] = []
    line_index = 0
    previous = 0
    for offset in sorted(offsets):
        line_index += data.count(b"\n", previous, offset)
        previous = offset
        indexes.append(line_index)
    return indexes
