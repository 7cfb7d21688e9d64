"""The vectorised split against an independent line-by-line implementation.

``benchmarks/baseline.py`` decodes each line with msgspec and applies the same rules in
plain Python. Both must produce the same rows for any line hypothesis can write: keys
and values with escapes, quotes, colons and braces inside strings, any spacing, ASCII or
not. This guards the token cutting in ``kmdagster/km_format/pairs.py``, which takes a
different path for lines with an escaped quote.
"""

from __future__ import annotations

import json

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.baseline import baseline_split
from kmdagster.km_format.split import split_km_lines

NOW = 1_800_000_000
# No surrogates (not text) and no \x1c-\x1f, which Python strips as whitespace and
# the Unicode definition polars uses does not: a difference of no interest here.
TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x1c\x1d\x1e\x1f"),
    max_size=12,
)
TRICKY = st.sampled_from(['"', "\\", ":", ",", "{", "}", '":"', '\\"', "/", " ", "é", "\t"])
STRINGS = st.lists(TEXT | TRICKY, max_size=3).map("".join)
VALUES = STRINGS | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.booleans()
SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : "), (",\t", ":\t")])


@st.composite
def km_lines(draw: st.DrawFn) -> bytes:
    record: dict[str, object] = {}
    if draw(st.booleans()) or draw(st.booleans()):
        record["_p"] = draw(STRINGS | st.integers(0, 10**6))
    if draw(st.booleans()) or draw(st.booleans()):
        record["_t"] = draw(
            st.integers(1_200_000_000, 1_900_000_000) | st.sampled_from(["1700000000", 5])
        )
    if draw(st.booleans()):
        record["_n"] = draw(STRINGS)
    if draw(st.integers(0, 4)) == 0:
        record["_p2"] = draw(STRINGS)
    for name, value in draw(st.dictionaries(STRINGS, VALUES, max_size=4)).items():
        record.setdefault(name, value)
    names = [key.replace(",", " ").replace(":", " ").lower() for key in record]
    if len(set(names)) < len(names):  # the baseline does not look for duplicate names
        record = {"_p": "x", "_t": 1_700_000_000, "_n": "no duplicates"}
    items = list(record.items())
    draw(st.randoms()).shuffle(items)
    text = json.dumps(dict(items), ensure_ascii=draw(st.booleans()), separators=draw(SEPARATORS))
    padding = draw(st.sampled_from(["", " ", "\t"]))
    return (padding + text + padding).encode()


def _rows(frame: pl.DataFrame, columns: list[str]) -> list[tuple]:
    return sorted(frame.select(columns).rows(), key=repr)


@settings(max_examples=300, deadline=None)
@given(st.lists(km_lines(), min_size=1, max_size=25))
def test_split_produces_the_rows_of_the_line_by_line_baseline(lines: list[bytes]) -> None:
    data = b"\n".join(lines) + b"\n"
    split = split_km_lines(data, 1, NOW)
    events, properties, aliases, rejects, blank, read = baseline_split(data, 1, NOW)

    assert (split.lines_read, split.blank_lines) == (read, blank)
    assert _rows(split.rejects, ["line_no", "reason"]) == sorted(rejects, key=repr)
    epoch = pl.col("ts").dt.epoch("s")
    assert _rows(
        split.events.with_columns(ts=epoch), ["line_no", "person", "event", "event_label", "ts"]
    ) == sorted(events, key=repr)
    assert _rows(split.aliases.with_columns(ts=epoch), ["line_no", "person", "alias", "ts"]) == (
        sorted(aliases, key=repr)
    )
    assert _rows(
        split.properties.with_columns(ts=epoch),
        ["line_no", "person", "ts", "name", "name_label", "value", "value_number"],
    ) == sorted(properties, key=repr)
