"""KISSmetrics' octal escapes: how they are found, and how a source may repair them.

KISSmetrics' Data Export writes some non-ASCII bytes inside strings as octal escapes, a
backslash and three octal digits (``"Frigidman\\231"``, ``"\\302\\243"`` for ``£``). JSON
has no such escape, so such a line is rejected as ``octal_escape``. A source with
``repair_octal_escapes`` on decodes each run of escaped bytes as UTF-8 and writes the
characters back as JSON text; a run that is not UTF-8 leaves the line ``invalid_utf8``.
Only the lines holding an escape go through Python: in a KISSmetrics export they are few.
"""

from __future__ import annotations

import re

import polars as pl

# An odd backslash (one not itself escaped by the one before) before three octal digits
# of a byte value. For polars, whose regular expressions have no look-behind.
OCTAL_ESCAPE_RE = r"(?:^|[^\\])(?:\\\\)*\\[0-3][0-7]{2}"
# (escaped backslashes before it, a run of octal escapes), for the repair.
_ESCAPE_RUN = re.compile(r"(?<!\\)((?:\\\\)*)((?:\\[0-3][0-7]{2})+)")
# What JSON text cannot hold as itself inside a string.
_JSON_SPECIAL = re.compile(r'["\\\x00-\x1f]')


def repaired_line(text: str) -> str | None:
    """``text`` with every run of octal escapes replaced by the UTF-8 text those bytes
    spell (JSON-escaped where JSON needs it); None if some run is not valid UTF-8."""
    try:
        return _ESCAPE_RUN.sub(_decoded_run, text)
    except UnicodeDecodeError:
        return None


def _decoded_run(match: re.Match[str]) -> str:
    octals = match.group(2)
    decoded = bytes(int(octals[i + 1 : i + 4], 8) for i in range(0, len(octals), 4)).decode()
    return match.group(1) + _JSON_SPECIAL.sub(lambda c: f"\\u{ord(c.group()):04x}", decoded)


def repair_octal_escapes(lines: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``lines`` (``decode_lines``' columns) with the octal escapes of valid UTF-8 lines
    repaired, and how many lines held one; a line whose escaped bytes are not UTF-8 keeps
    its text and becomes ``invalid_utf8``."""
    has_escape = ~pl.col("invalid_utf8") & pl.col("text").str.contains(OCTAL_ESCAPE_RE)
    escaped = lines.select(has_escape.arg_true()).to_series()
    if escaped.is_empty():
        return lines, 0
    texts = lines["text"].gather(escaped).to_list()
    repaired = [repaired_line(text) for text in texts]
    repaired_lines = lines.with_columns(
        lines["text"].scatter(
            escaped,
            [text if fixed is None else fixed for text, fixed in zip(texts, repaired, strict=True)],
        ),
        lines["invalid_utf8"].scatter(
            escaped.filter(pl.Series([fixed is None for fixed in repaired], dtype=pl.Boolean)),
            True,
        ),
    )
    return repaired_lines, escaped.len()
