"""KISSmetrics' octal escapes (the reason, the repair) and where a rejected line is: its
byte offset in the file and, for a line that is not JSON, the character where parsing
stopped. Pure functions, and one import through the source's setting."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from kmdagster.km_format.octal_escapes import repaired_line
from kmdagster.km_format.reasons import REJECT_REASONS
from kmdagster.km_format.split import split_km_lines
from kmdagster.km_format.summary import PreviewAccumulator
from kmdagster.warehouse.file_rows import reject_batches
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_dev.km_files import compressed_bytes
from kmdagster_tests.helpers import run_import
from kmdagster_tests.test_import_asset import query

NOW = 1_800_000_000
POUND = r'{"_p":"1","_t":1328044149,"_n":"Paid","price":"\302\24315"}'  # £15
NOT_UTF8 = r'{"_p":"1","_t":1328044149,"nickname":"Frigidman\231"}'  # 0x99 alone
ESCAPED_BACKSLASH = r'{"_p":"1","_t":1328044149,"path":"C:\\231"}'  # JSON: a backslash, 231


def split(*lines: str, repair: bool = False, first_byte_offset: int = 0):
    data = "\n".join(lines).encode() + b"\n"
    return split_km_lines(data, 1, NOW, first_byte_offset=first_byte_offset, repair_octal=repair)


def test_octal_escapes_are_rejected_with_a_reason_that_says_how_to_fix_them() -> None:
    result = split(POUND, NOT_UTF8, ESCAPED_BACKSLASH)
    assert result.rejects.select("line_no", "reason").rows() == [
        (1, "octal_escape"),
        (2, "octal_escape"),
    ]
    assert result.loaded_lines == 1  # an escaped backslash before digits is plain JSON
    assert "repair_octal_escapes" in REJECT_REASONS["octal_escape"]


def test_the_repair_decodes_escaped_bytes_as_utf8_and_rejects_what_is_not() -> None:
    result = split(POUND, NOT_UTF8, ESCAPED_BACKSLASH, repair=True)
    assert result.rejects.select("line_no", "reason").rows() == [(2, "invalid_utf8")]
    assert result.properties.filter(line_no=1)["value"].to_list() == ["£15"]
    assert result.properties.filter(line_no=3)["value"].to_list() == ["C:\\231"]
    assert result.octal_repaired == 2
    assert (result.lines_read, result.loaded_lines, result.rejected_lines) == (3, 2, 1)


@pytest.mark.parametrize(
    ("escaped", "value"),
    [
        (r"\342\204\242", "™"),
        (r"a\042b", 'a"b'),  # a quote spelled in octal stays inside the string
        (r"\134", "\\"),  # so does a backslash
        (r"\\\302\243", "\\£"),  # an escaped backslash, then an escape
    ],
)
def test_repaired_text_is_json_for_what_the_bytes_spell(escaped: str, value: str) -> None:
    line = '{"v":"' + escaped + '"}'
    fixed = repaired_line(line)
    assert fixed is not None
    assert json.loads(fixed) == {"v": value}


def test_the_preview_counts_the_lines_the_repair_would_recover() -> None:
    for repair, expected in ((False, (2, 0)), (True, (0, 3))):
        lines = (POUND, POUND, NOT_UTF8, ESCAPED_BACKSLASH)
        data = ("\n".join(lines) + "\n").encode()
        preview = PreviewAccumulator()
        preview.add(split_km_lines(data, 1, NOW, with_sent_names=True, repair_octal=repair))
        assert (preview.octal_recoverable, preview.octal_repaired) == expected
        warnings = " ".join(preview.summary().warnings)
        assert ("2 lines rejected (octal_escape) would load" in warnings) is not repair
        assert ("3 lines hold KISSmetrics' octal escapes" in warnings) is repair


def test_rejects_carry_the_byte_offset_of_their_line_in_the_file() -> None:
    good = '{"_p":"1","_t":1328044149,"_n":"x"}'
    lines = [good, "not json", "", good, '{"_p":"1"}', "\r", "[1]"]
    result = split(*lines, first_byte_offset=1000)
    starts = [1000 + sum(len(line) + 1 for line in lines[:i]) for i in range(len(lines))]
    assert result.rejects.select("line_no", "byte_offset").rows() == [
        (2, starts[1]),
        (5, starts[4]),
        (7, starts[6]),
    ]


@pytest.mark.parametrize(
    ("line", "position"),
    [
        ('{"_p": oops}', 8),  # the o of oops
        # After the trailing comma; Python 3.13's parser names the comma itself.
        ('{"_p":"1","_t":1328044149,"_n":"x",}', 35 if sys.version_info >= (3, 13) else 36),
        ('{"_p":"1","_t":1328044149 "_n":"x"}', 27),  # where the comma should be
        (NOT_UTF8, 48),  # the backslash of the escape
    ],
)
def test_lines_that_are_not_json_say_where_parsing_stopped(line: str, position: int) -> None:
    [(reason, found)] = split(line).rejects.select("reason", "error_position").rows()
    assert reason in ("invalid_json", "octal_escape")
    assert found == position


def test_rejects_of_json_lines_have_no_error_position() -> None:
    result = split('{"_p":"1","_t":-5,"_n":"x"}', "[1, 2]")
    assert result.rejects["error_position"].to_list() == [None, None]


@pytest.mark.parametrize("repair", [False, True])
def test_a_source_imports_octal_lines_as_its_repair_setting_says(
    s3: Any, bucket: str, tmp_path: Path, repair: bool
) -> None:
    key = "accounts-octal.json.gz"  # compressed: offsets count the uncompressed bytes
    lines = (POUND, NOT_UTF8, ESCAPED_BACKSLASH)
    data = ("\n".join(lines) + "\n").encode()
    s3.put_object(Bucket=bucket, Key=key, Body=compressed_bytes(data, "gzip"))
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        report = run_import(s3, warehouse, bucket, key, 1 << 20, repair_octal_escapes=repair)
    assert (report.lines_loaded, report.lines_rejected) == ((2, 1) if repair else (1, 2))
    rejects = query(
        tmp_path / "w.duckdb",
        "SELECT line_no, byte_offset, reason FROM km_rejects ORDER BY line_no",
    )
    second_line = len(POUND) + 1
    expected = [(2, second_line, "invalid_utf8")]
    if not repair:
        expected = [(1, 0, "octal_escape"), (2, second_line, "octal_escape")]
    assert rejects == expected
    prices = query(tmp_path / "w.duckdb", "SELECT value FROM km_properties WHERE name = 'price'")
    assert prices == ([("£15",)] if repair else [])


def test_the_rejects_file_reads_every_reject_once_in_line_order_batch_by_batch(
    s3: Any, bucket: str, warehouse_path: Path
) -> None:
    """``reject_batches`` pages through a file's rejects by line number (a query per
    batch, so no sort of the whole file is held): every reject once, in order, whatever
    the batch size, and nothing of another file."""
    lines = [json.dumps({"_p": f"p{n}", "_t": 1764460800, "_n": "Ok"}) for n in range(40)]
    for n in range(0, 40, 3):
        lines[n] = "not json"
    body = ("\n".join(lines) + "\n").encode()
    for key in ("accounts.1.json", "accounts.2.json"):
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    with DuckDBWarehouse.connect(warehouse_path) as warehouse:
        rows = [
            run_import(s3, warehouse, bucket, k, 1024).ledger
            for k in ("accounts.1.json", "accounts.2.json")
        ]
        for batch_rows in (1, 4, 14, 100):
            batches = list(reject_batches(warehouse.database, rows[1], batch_rows))
            assert all(0 < b.height <= batch_rows for b in batches)
            read = [n for b in batches for n in b.get_column("line_no").to_list()]
            assert read == list(range(1, 41, 3)), batch_rows  # line numbers count from 1
