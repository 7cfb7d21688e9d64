"""Unit tests of the pure format logic: every rule and every reject reason."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kmdagster.km_format.columns import constant, every_other_row
from kmdagster.km_format.key_names import KeyNames
from kmdagster.km_format.lines import DECODE_RUN_BYTES, count_lines
from kmdagster.km_format.reasons import REJECT_REASONS
from kmdagster.km_format.split import MAX_RAW_LINE_CHARS, split_km_lines

NOW = 1_800_000_000
TS = 1_328_044_149
UTC_TS = datetime.fromtimestamp(TS, tz=timezone.utc)


def split(*lines: str | bytes, first_line_no: int = 1):
    raw = [line.encode() if isinstance(line, str) else line for line in lines]
    return split_km_lines(b"\n".join(raw) + b"\n", first_line_no, NOW)


REJECT_CASES: list[tuple[str | bytes, str]] = [
    (b'{"_p":"1","_t":1328044149,"_n":"\xff"}', "invalid_utf8"),
    ("[1, 2]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    ("42", "not_an_object"),
    ('{"_p":"1","_t":1328044149,"a":{"b":1}}', "nested_value"),
    (r'{"_p":"1","_t":1328044149,"nickname":"Frigidman\231"}', "octal_escape"),
    ('{"_p":"1","_t":1328044149,"a":[1]}', "nested_value"),
    ('{"_p":"1","_t":1328044149,"a: {":Infinity}', "invalid_json"),  # ": {" in a string
    ('{"_p":"1","_t":', "invalid_json"),
    ('{"_p":"1","_t":1328044149,}', "invalid_json"),
    ("{'_p':'1'}", "invalid_json"),
    ('{"_p":"1","_t":1328044149,"_n":"a\x01b"}', "invalid_json"),
    ('{"_p":"1","_t":1328044149,"_n":"\\ud800"}', "invalid_unicode_escape"),
    ('{"_p":"1","_t":1328044149,"_n":"\\udc00x"}', "invalid_unicode_escape"),
    ('{"_p":"1","_t":1328044149,"_n":"a\\u0000"}', "invalid_unicode_escape"),
    ('{"_p":"1\\u0000","_t":1328044149,"_n":"a"}', "invalid_unicode_escape"),
    ('{"_p":"1","_t":1328044149,"k\\u0000":"v"}', "invalid_unicode_escape"),
    ('{"_p":"1","_t":1328044149,"Age":1,"age":2}', "duplicate_key"),
    ('{"_p":"1","_t":1328044149,"a:b":1,"a b":2}', "duplicate_key"),
    ('{"_p":"1","_p":"2","_t":1328044149,"_n":"x"}', "duplicate_key"),
    ('{"_t":1328044149,"_n":"x"}', "missing_identity"),
    ("{}", "missing_identity"),
    ('{"_p":true,"_t":1328044149,"_n":"x"}', "identity_not_text"),
    ('{"_p":1.5,"_t":1328044149,"_n":"x"}', "identity_not_text"),
    ('{"_p":"  ","_t":1328044149,"_n":"x"}', "identity_empty"),
    (json.dumps({"_p": "p" * 256, "_t": TS, "_n": "x"}), "identity_too_long"),
    ('{"_p":"1","_n":"x"}', "missing_timestamp"),
    ('{"_p":"1","_t":1328044149.5,"_n":"x"}', "timestamp_not_integer"),
    ('{"_p":"1","_t":"soon","_n":"x"}', "timestamp_not_integer"),
    ('{"_p":"1","_t":null,"_n":"x"}', "timestamp_not_integer"),
    ('{"_p":"1","_t":-5,"_n":"x"}', "timestamp_negative"),
    ('{"_p":"1","_t":1328044149000,"_n":"x"}', "timestamp_in_milliseconds"),
    ('{"_p":"1","_t":"1328044149000","_n":"x"}', "timestamp_in_milliseconds"),
    ('{"_p":"1","_t":1230767999,"_n":"x"}', "timestamp_before_2009"),
    ('{"_p":"1","_t":0,"_n":"x"}', "timestamp_before_2009"),
    (f'{{"_p":"1","_t":{NOW + 86_401},"_n":"x"}}', "timestamp_in_future"),
    ('{"_p":"1","_t":99999999999999999999999,"_n":"x"}', "timestamp_in_future"),
    ('{"_p":"1","_t":1328044149,"_n":7}', "event_name_not_text"),
    ('{"_p":"1","_t":1328044149,"_n":" "}', "event_name_empty"),
    (json.dumps({"_p": "1", "_t": TS, "_n": "e" * 255}), "event_name_too_long"),
    ('{"_p":"1","_t":1328044149,"_p2":false}', "alias_not_text"),
    ('{"_p":"1","_t":1328044149,"_p2":""}', "alias_empty"),
    (json.dumps({"_p": "1", "_t": TS, "_p2": "a" * 256}), "alias_too_long"),
    ('{"_p":"1","_t":1328044149,"":"v"}', "property_name_empty"),
    (json.dumps({"_p": "1", "_t": TS, "n" * 255: "v"}), "property_name_too_long"),
    ('{"_p":"1","_t":1328044149,"Plan":null}', "property_value_null"),
    (json.dumps({"_p": "1", "_t": TS, "Big": "v" * 8193}), "property_value_too_long"),
    ('{"_p":"1","_t":1328044149}', "nothing_to_record"),
]


@pytest.mark.parametrize(("line", "reason"), REJECT_CASES)
def test_each_rule_rejects_with_its_reason(line: str | bytes, reason: str) -> None:
    result = split(line)
    assert result.rejects["reason"].to_list() == [reason]
    assert result.rejects["line_no"].to_list() == [1]
    assert result.loaded_lines == 0
    assert result.events.height == result.properties.height == result.aliases.height == 0


def test_every_reason_in_the_vocabulary_is_exercised() -> None:
    exercised = {reason for _, reason in REJECT_CASES}
    assert exercised == set(REJECT_REASONS)


def test_split_of_the_four_documented_examples() -> None:
    result = split(
        '{"_p":"1","_t":1328044149,"_n":"Subscribed"}',
        '{"_p":"1","_t":1328044149,"_n":"Subscribed","Age":32,"Gender":"Male"}',
        '{"_p":"1","_t":1328044149,"Email Address":"bob@bob.com"}',
        '{"_p":"1","_t":1328044149,"_p2":"bob"}',
    )
    assert result.rejects.height == 0
    assert (result.lines_read, result.loaded_lines, result.blank_lines) == (4, 4, 0)
    assert_frame_equal(
        result.events,
        pl.DataFrame(
            {
                "line_no": [1, 2],
                "person": ["1", "1"],
                "event": ["subscribed", "subscribed"],
                "event_label": ["Subscribed", "Subscribed"],
                "ts": [UTC_TS, UTC_TS],
            }
        ),
        check_dtypes=False,
    )
    assert_frame_equal(
        result.properties.select("line_no", "name", "name_label", "value", "value_number"),
        pl.DataFrame(
            {
                "line_no": [2, 2, 3],
                "name": ["age", "gender", "email address"],
                "name_label": ["Age", "Gender", "Email Address"],
                "value": ["32", "Male", "bob@bob.com"],
                "value_number": [32.0, None, None],
            }
        ),
    )
    assert result.aliases.select("line_no", "person", "alias").rows() == [(3 + 1, "1", "bob")]
    assert result.events["ts"].dtype == pl.Datetime("us", "UTC")


def test_names_normalise_commas_colons_and_case_but_values_keep_case() -> None:
    result = split('{"_p":"a","_t":1328044149,"_n":"Signed:Up,Now","Tier:Level":"Gold"}')
    assert result.events.select("event", "event_label").row(0) == (
        "signed up now",
        "Signed Up Now",
    )
    assert result.properties.select("name", "name_label", "value").row(0) == (
        "tier level",
        "Tier Level",
        "Gold",
    )


def test_values_numbers_booleans_and_numeric_strings() -> None:
    result = split('{"_p":"a","_t":1328044149,"n":1.5e3,"s":"123","b":true,"t":"x\\ty\\u00e9"}')
    rows = {r["name"]: (r["value"], r["value_number"]) for r in result.properties.to_dicts()}
    assert rows == {
        "n": ("1.5e3", 1500.0),
        "s": ("123", 123.0),
        "b": ("true", None),
        "t": ("x\tyé", None),
    }


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ('" 42 "', 42.0),
        ('"-0.5e1"', -5.0),
        ('"1e400"', None),
        ("1e400", None),
        ('"inf"', None),
        ('"NaN"', None),
        ('"+1"', None),
        ('".5"', None),
        ('"5."', None),
        ('"0x10"', None),
        ('"1 2"', None),
        ("-0", -0.0),
    ],
)
def test_only_json_numbers_and_strings_holding_one_get_a_number(
    value: str, number: float | None
) -> None:
    result = split(f'{{"_p":"a","_t":1328044149,"v":{value}}}')
    assert result.properties["value_number"].to_list() == [number]


def test_identity_and_timestamp_accepted_forms() -> None:
    result = split(
        '{"_p":12345,"_t":"1328044149","_n":"x"}',
        '{"_p":"a@b.c","_t":1328044149,"_n":"x","_p2":"b"}',
        '{"_p":"😀","_t":1230768000,"_n":"\\ud83d\\ude00"}',
    )
    assert result.rejects.height == 0
    assert result.events["person"].to_list() == ["12345", "a@b.c", "😀"]
    assert result.events["event"].to_list()[2] == "😀"
    assert result.aliases.height == 1


def test_blank_lines_crlf_and_line_numbers_from_offset() -> None:
    data = b'{"_p":"1","_t":1328044149,"_n":"a"}\r\n\r\n  \n{"_p":"1","_t":1328044149,"_n":"b"}'
    result = split_km_lines(data, 101, NOW)
    assert (result.lines_read, result.blank_lines, result.loaded_lines) == (4, 2, 2)
    assert result.events["line_no"].to_list() == [101, 104]
    assert result.events["event"].to_list() == ["a", "b"]


def test_empty_block_has_no_lines() -> None:
    result = split_km_lines(b"", 1, NOW)
    assert (result.lines_read, result.blank_lines, result.rejected_lines) == (0, 0, 0)


def test_rejected_raw_line_is_kept_and_truncated() -> None:
    long_bad = "{" + "x" * 20_000
    result = split("[1]", long_bad)
    assert result.rejects["raw_line"].to_list()[0] == "[1]"
    assert len(result.rejects["raw_line"].to_list()[1]) == MAX_RAW_LINE_CHARS
    assert result.rejects["raw_chars"].to_list() == [3, len(long_bad)]


def test_nul_is_never_loaded_and_shows_as_a_replacement_in_rejects() -> None:
    """No warehouse text type holds NUL: an escaped one rejects the line, a raw one (not
    JSON) is kept in the rejected line as U+FFFD; an escaped backslash before u0000 is text."""
    result = split('{"_p":"1","_t":1328044149,"k":"a\\\\u0000"}', b'{"_p":"1\x00","_t":1328044149}')
    assert result.properties["value"].to_list() == ["a\\u0000"]
    assert result.rejects["reason"].to_list() == ["invalid_json"]
    assert result.rejects["raw_line"].to_list() == ['{"_p":"1\ufffd","_t":1328044149}']
    assert result.rejects["raw_chars"].to_list() == [len('{"_p":"1","_t":1328044149}') + 1]


def test_invalid_utf8_only_rejects_its_own_line() -> None:
    good = b'{"_p":"1","_t":1328044149,"_n":"ok"}'
    result = split(good, b"\xc3\x28 bad", good, b"\xff", good)
    assert result.rejects["line_no"].to_list() == [2, 4]
    assert set(result.rejects["reason"]) == {"invalid_utf8"}
    assert result.events["line_no"].to_list() == [1, 3, 5]
    assert result.rejects["raw_line"].to_list() == ["\ufffd( bad", "\ufffd"]


def test_undecodable_lines_are_found_in_every_run_of_a_large_piece() -> None:
    # The piece is checked in runs of whole lines: bad bytes in the first, a middle and
    # the last run, and a valid multi-byte character in every line between.
    good = '{"_p":"é","_t":1328044149,"_n":"ünïcode"}'.encode()
    lines = [good] * (3 * DECODE_RUN_BYTES // len(good))
    bad_at = [2, len(lines) // 2, len(lines) - 1]
    for at in bad_at:
        lines[at] = b'{"_p":"1","_t":1328044149,"_n":"\xe9"}'
    result = split(*lines)
    assert result.rejects["line_no"].to_list() == [at + 1 for at in bad_at]
    assert set(result.rejects["reason"]) == {"invalid_utf8"}
    assert result.events.height == len(lines) - len(bad_at)
    assert count_lines(b"\n".join(lines)) == len(lines)
    assert count_lines(b"\n".join(lines) + b"\n") == len(lines)


def test_an_undecodable_piece_keeps_its_other_text_exact() -> None:
    good = '{"_p":"é","_t":1328044149,"_n":"ünïcode"}'.encode()
    result = split(good, b'{"_p":"1","_t":1328044149,"_n":"\xe9t\xc3"}', good)
    assert result.events["person"].to_list() == ["é", "é"]
    assert result.events["event_label"].to_list() == ["ünïcode", "ünïcode"]
    assert result.rejects["raw_line"].to_list() == [
        '{"_p":"1","_t":1328044149,"_n":"\ufffdt\ufffd"}'
    ]


def test_names_remembered_from_earlier_pieces_still_meet_the_rules() -> None:
    split(f'{{"_p":"1","_t":{TS},"Plan":"a"}}')
    result = split(
        f'{{"_p":"1","_t":{TS},"plan":"b","PLAN":"c"}}',
        f'{{"_p":"1","_t":{TS},"Plan":"d","Ti:er":"x"}}',
    )
    assert result.rejects.select("line_no", "reason").rows() == [(1, "duplicate_key")]
    assert result.properties.select("name", "name_label").rows() == [
        ("plan", "Plan"),
        ("ti er", "Ti er"),
    ]


def test_key_names_describe_keys_only_when_one_is_new_and_stay_bounded() -> None:
    described: list[list[str]] = []

    def describe(keys: pl.DataFrame) -> pl.DataFrame:
        described.append(sorted(keys["key"]))
        return keys.with_columns(length=pl.col("key").str.len_chars())

    names = KeyNames(describe, never_null="length", max_keys=3)

    def lengths(*keys: str) -> list[int]:
        return names.join(pl.DataFrame({"key": list(keys)}))["length"].to_list()

    assert lengths("a", "bb", "a") == [1, 2, 1]
    assert lengths("bb") == [2]
    assert described == [["a", "bb"]]
    assert lengths("ccc", "a") == [3, 1]
    assert described[-1] == ["a", "bb", "ccc"]
    assert lengths("dddd", "a") == [4, 1]
    assert described[-1] == ["a", "dddd"]  # over the bound: this piece's keys only


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.binary(max_size=60)
        | st.sampled_from(
            [
                b'{"_p":"1","_t":1328044149,"_n":"x"}',
                b'{"_p":"1","_t":1328044149,"k":"v"}',
                b"",
                b"{}",
            ]
        ),
        max_size=30,
    )
)
def test_every_line_is_loaded_rejected_or_blank_exactly_once(chunks: list[bytes]) -> None:
    data = b"\n".join(chunk.replace(b"\n", b" ") for chunk in chunks)
    result = split_km_lines(data, 1, NOW)
    rejected = set(result.rejects["line_no"].to_list())
    loaded = (
        set(result.events["line_no"].to_list())
        | set(result.properties["line_no"].to_list())
        | set(result.aliases["line_no"].to_list())
    )
    assert not rejected & loaded
    assert len(rejected) == result.rejects.height
    assert result.lines_read == result.loaded_lines + result.rejected_lines + result.blank_lines
    assert len(loaded) == result.loaded_lines
    assert loaded | rejected <= set(range(1, result.lines_read + 1))


def test_consecutive_pieces_split_to_the_same_rows_as_the_whole_block() -> None:
    block = "\n".join(
        [
            json.dumps({"_p": f"u{i}", "_t": 1_700_000_000 + i, "_n": "Seen", "n": i})
            for i in range(40)
        ]
        + ["not json", "", '{"_p": "u1", "_t": 1700000000, "_p2": "u2"}']
    ).encode()
    whole = split_km_lines(block, 7, NOW, first_byte_offset=100)
    line_no, offset = 7, 100
    parts = []
    lines = block.splitlines(keepends=True)
    for piece in (b"".join(lines[i : i + 6]) for i in range(0, len(lines), 6)):
        parts.append(split_km_lines(piece, line_no, NOW, first_byte_offset=offset))
        line_no += count_lines(piece)
        offset += len(piece)
    assert len(parts) > 5
    for table in ("events", "properties", "aliases", "rejects"):
        assert_frame_equal(pl.concat([getattr(p, table) for p in parts]), getattr(whole, table))
    assert sum(p.blank_lines for p in parts) == whole.blank_lines == 1


@pytest.mark.parametrize("length", [0, 1, 5])
@pytest.mark.parametrize(
    ("value", "dtype"), [(None, pl.UInt8), (False, pl.Boolean), (None, pl.String), (3, pl.Int32)]
)
def test_constant_columns_match_polars_repeat(length: int, value: object, dtype: Any) -> None:
    expected = pl.repeat(value, length, dtype=dtype, eager=True)
    assert constant(value, length, dtype).equals(expected, check_names=False)


@pytest.mark.parametrize("rows", [0, 1, 6, 7])
def test_every_other_row_matches_gather_every(rows: int) -> None:
    frame = pl.DataFrame({"n": list(range(rows)), "s": [f"s{i}" for i in range(rows)]})
    for offset in (0, 1):
        assert every_other_row(frame, offset).equals(frame.gather_every(2, offset))
