"""The bad-input corpus: every malformed line we could think of has a written outcome.

``corpus/expected.json`` gives each corpus file's outcome per line: ``loaded``, ``blank``
or the reject reason (README, "Format rules"). Each file is checked by the pure split and
through the real import (SeaweedFS, 1 KB chunks, into DuckDB and PostgreSQL); giant lines
are generated here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmdagster.config import WarehouseSettings
from kmdagster.km_format.lines import UTF8_BOM
from kmdagster.km_format.split import MAX_RAW_LINE_CHARS, SplitLines, split_km_lines
from kmdagster.warehouse.backends import open_warehouse
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_tests.helpers import run_import

CORPUS = Path(__file__).parent / "corpus"
EXPECTED: dict[str, list[str]] = json.loads((CORPUS / "expected.json").read_text())
NOW = 1_800_000_000
TEN_MB = 10 * 1024 * 1024


def outcomes(split: SplitLines) -> list[str]:
    """Each line's fate in file order: its reject reason, ``loaded`` or ``blank``."""
    reasons = dict(zip(split.rejects["line_no"], split.rejects["reason"], strict=True))
    loaded = (
        set(split.events["line_no"])
        | set(split.properties["line_no"])
        | set(split.aliases["line_no"])
    )
    first = min([*reasons, *loaded], default=1)
    return [
        reasons.get(n, "loaded" if n in loaded else "blank")
        for n in range(first, first + split.lines_read)
    ]


def corpus_bytes(name: str) -> bytes:
    data = (CORPUS / name).read_bytes()
    return data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data


def test_the_corpus_has_a_written_outcome_for_every_file() -> None:
    files = {path.name for path in CORPUS.glob("*.json")} - {"expected.json"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_lines_meet_their_written_outcome(name: str) -> None:
    split = split_km_lines(corpus_bytes(name), 1, NOW)
    assert outcomes(split) == EXPECTED[name]
    assert split.lines_read == split.loaded_lines + split.rejected_lines + split.blank_lines


def test_numbers_out_of_double_range_keep_their_text_and_no_number() -> None:
    split = split_km_lines(corpus_bytes("numbers_out_of_range.json"), 1, NOW)
    values = dict(zip(split.properties["name"], split.properties["value"], strict=True))
    assert values == {"big": "1e400", "tiny": "-1e-400"}
    numbers = dict(zip(split.properties["name"], split.properties["value_number"], strict=True))
    assert numbers["big"] is None  # not infinity: the value is not a representable number
    assert numbers["tiny"] == 0.0 or numbers["tiny"] is None


def test_an_escaped_nul_is_rejected_and_a_raw_one_kept_as_a_replacement() -> None:
    split = split_km_lines(corpus_bytes("nul_bytes.json"), 1, NOW)
    assert split.events.height == 0
    assert split.rejects["raw_line"].to_list()[0] == '{"_p":"1","_t":1328044149,"_n":"a\ufffdb"}'
    assert split.rejects["reason"].to_list()[2] == "invalid_unicode_escape"


def test_whole_corpus_through_the_import_never_crashes_a_chunk(
    s3: Any, bucket: str, warehouse_settings: WarehouseSettings
) -> None:
    keys = {f"accounts.{name}": name for name in EXPECTED}
    for key, name in keys.items():
        s3.put_object(Bucket=bucket, Key=key, Body=(CORPUS / name).read_bytes())
    with open_warehouse(warehouse_settings) as warehouse:
        for key in keys:
            report = run_import(
                s3,
                warehouse,
                bucket,
                key,
                1024,
                time_budget_seconds=600,
            )
            assert report.complete
        database = warehouse.database
        for key, name in keys.items():
            expected = EXPECTED[name]
            [ledger] = database.rows(
                "SELECT lines_read, lines_loaded, lines_rejected, lines_blank "
                "FROM km_import_files WHERE file_key = $1",
                [key],
            )
            assert ledger == (
                len(expected),
                expected.count("loaded"),
                len(expected) - expected.count("loaded") - expected.count("blank"),
                expected.count("blank"),
            ), name
            reasons = database.rows(
                "SELECT reason FROM km_rejects WHERE file_key = $1 ORDER BY line_no", [key]
            )
            assert [r for (r,) in reasons] == [o for o in expected if o not in ("loaded", "blank")]


def test_ten_megabyte_lines_are_rejected_whole_and_their_neighbours_load(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    good = b'{"_p":"1","_t":1328044149,"_n":"ok"}'
    huge_value = b'{"_p":"1","_t":1328044149,"Big":"' + b"v" * TEN_MB + b'"}'
    huge_garbage = b"{" + b"x" * TEN_MB
    data = b"\n".join([good, huge_value, good, huge_garbage, good]) + b"\n"
    s3.put_object(Bucket=bucket, Key="accounts.huge.json", Body=data)
    warehouse_path = tmp_path / "w.duckdb"
    with DuckDBWarehouse.connect(warehouse_path) as warehouse:
        # Each huge line is ten 1 MB chunks long.
        report = run_import(s3, warehouse, bucket, "accounts.huge.json", 1024 * 1024)
    assert report.complete and report.ledger.next_offset == len(data)
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        rejects = con.execute(
            "SELECT line_no, reason, length(raw_line), raw_chars FROM km_rejects ORDER BY line_no"
        ).fetchall()
        events = con.execute("SELECT line_no FROM km_events ORDER BY line_no").fetchall()
    assert rejects == [
        (2, "property_value_too_long", MAX_RAW_LINE_CHARS, len(huge_value)),
        (4, "invalid_json", MAX_RAW_LINE_CHARS, len(huge_garbage)),
    ]
    assert events == [(1,), (3,), (5,)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_every_line_is_loaded_rejected_or_blank_exactly_once(data: bytes) -> None:
    split = split_km_lines(data, 1, NOW)
    lines = data.split(b"\n")
    expected_lines = len(lines) - (1 if data.endswith(b"\n") or not data else 0)
    assert split.lines_read == expected_lines
    assert split.lines_read == split.loaded_lines + split.rejected_lines + split.blank_lines
    fates = outcomes(split)
    assert len(fates) == split.lines_read
    assert split.rejects["line_no"].is_unique().all()
