"""Compressed files (gzip and zstd, written by the real ``gzip`` and ``zstd`` tools) import
exactly like their plain twins: the same rows and rejects, resumed across budget-stopped
runs, archived under their own names; a file cut short loads the lines before the cut
once and fails clearly; a decompression bomb stops at the limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance

from kmdagster.s3.objects import FilePattern, UnreadableFileError, compression_of
from kmdagster.status import read_source_status
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_dev.km_files import COMPRESSION_TOOLS, compressed_bytes, km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import make_config, run_import
from kmdagster_tests.test_import_asset import materialize_partition, query

PLAIN = "accounts-0001.json"
SUFFIX = {compression: suffix for compression, (suffix, _) in COMPRESSION_TOOLS.items()}
# What a file's rows are, whatever its key: the rows compared between twins.
ROWS = {
    "km_events": "line_no, person, event, ts",
    "km_properties": "line_no, person, name, value, value_number",
    "km_aliases": "line_no, person, alias",
    "km_rejects": "line_no, byte_offset, reason, error_position, raw_line",
}


def rows_of(warehouse: Path, key: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: query(
            warehouse, f"SELECT {columns} FROM {table} WHERE file_key = '{key}' ORDER BY 1"
        )
        for table, columns in ROWS.items()
    }


def ledger_of(warehouse: Path, key: str) -> tuple[Any, ...]:
    [row] = query(
        warehouse,
        "SELECT status, next_offset, lines_read, lines_loaded, lines_rejected, lines_blank "
        f"FROM km_import_files WHERE file_key = '{key}'",
    )
    return row


def test_compressed_keys_match_the_base_filename_unless_turned_off() -> None:
    pattern = FilePattern.from_base_filename("accounts.json")
    for key in ("accounts.json", "accounts-1.json.gz", "accounts.2.json.zst"):
        assert pattern.matches(key), key
    for key in ("accounts.json.bz2", "accounts.gz", "x/accounts.json.gz", "accounts.jsonl.gz"):
        assert not pattern.matches(key), key
    plain_only = FilePattern.from_base_filename("accounts.json", compressed=False)
    assert plain_only.matches("accounts.json") and not plain_only.matches("accounts.json.gz")
    assert FilePattern.from_base_filename("accounts.json.gz").matches("accounts-1.json.gz")
    assert pattern.describe() == "accounts*.json[.gz|.zst]"
    assert [compression_of(k) for k in ("a.json", "a.json.gz", "a.json.zst")] == [
        None,
        "gzip",
        "zstd",
    ]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_file_imports_resumes_and_archives_like_its_plain_twin(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_path: Path,
    instance: DagsterInstance,
    compression: str,
) -> None:
    file = km_file(seed=21, repeats=30)  # ~18 KB: several 2 KB chunks
    key = PLAIN + SUFFIX[compression]
    s3.put_object(Bucket=bucket, Key=PLAIN, Body=file.data)
    s3.put_object(Bucket=bucket, Key=key, Body=compressed_bytes(file.data, compression))
    # Each run commits one 2 KB chunk and stops on its budget.
    config = make_config(
        s3_server, bucket, warehouse_path, chunk_bytes=2048, time_budget_seconds=0.001
    )
    status = read_source_status(s3, config.sources[0], config.warehouse, 1.0)
    assert {s.key: s.compression for s in status.states} == {PLAIN: None, key: compression}

    runs: dict[str, int] = {}
    for name in (PLAIN, key):
        runs[name] = 0
        while True:
            result = materialize_partition(config, instance, name)
            assert result.success
            runs[name] += 1
            done = AssetKey(["accounts", "archived_file"]) in {
                e.asset_key for e in result.get_asset_materialization_events()
            }
            if done:
                break
            assert runs[name] < 60

    assert runs[key] == runs[PLAIN] > 3  # the same chunks, one per run
    assert rows_of(warehouse_path, key) == rows_of(warehouse_path, PLAIN)
    assert ledger_of(warehouse_path, key) == ledger_of(warehouse_path, PLAIN)
    [(archived, size, read)] = query(
        warehouse_path,
        "SELECT archived_key, size_bytes, read_offset FROM km_import_files "
        f"WHERE file_key = '{key}'",
    )
    assert archived.startswith("completed_imports/") and archived.endswith("/" + key)
    assert read == size  # the whole object was read
    assert s3.get_object(Bucket=bucket, Key=archived)["Body"].read() == compressed_bytes(
        file.data, compression
    )


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_concatenated_members_and_frames_read_whole(
    s3: Any, bucket: str, tmp_path: Path, compression: str
) -> None:
    first, second = km_file(seed=1, repeats=4), km_file(seed=2, repeats=5)
    key = "accounts-cat.json" + SUFFIX[compression]
    body = compressed_bytes(first.data, compression) + compressed_bytes(second.data, compression)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        report = run_import(s3, warehouse, bucket, key, 1 << 20)
    assert report.complete
    assert report.lines_read == first.lines + second.lines
    assert report.ledger.next_offset == len(first.data) + len(second.data)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_file_cut_short_loads_the_lines_before_the_cut_once_and_fails_clearly(
    s3: Any, bucket: str, tmp_path: Path, compression: str
) -> None:
    file = km_file(seed=5, repeats=2000)  # ~1.2 MB: zstd blocks of 128 KB before the cut
    whole = compressed_bytes(file.data, compression)
    key = "accounts-cut.json" + SUFFIX[compression]
    s3.put_object(Bucket=bucket, Key=key, Body=whole[: len(whole) // 2])
    path = tmp_path / "w.duckdb"
    for attempt in range(2):  # a retry fails the same way and loads nothing twice
        with DuckDBWarehouse.connect(path) as warehouse:
            with pytest.raises(UnreadableFileError, match="is cut short") as raised:
                run_import(s3, warehouse, bucket, key, 64 * 1024, piece_bytes=16 * 1024)
            row = warehouse.ledger_row(
                "accounts", key, s3.head_object(Bucket=bucket, Key=key)["ETag"]
            )
        assert f"s3://{bucket}/{key}" in str(raised.value)
        assert "upload the whole file again" in str(raised.value)
        assert row is not None and row.status == "failed" and not row.is_complete
        loaded_through = file.data[: row.next_offset]
        assert 0 < row.next_offset < len(file.data) and loaded_through.endswith(b"\n")
        lines = loaded_through.count(b"\n")
        assert row.lines_read == lines, attempt
        [(events, distinct)] = query(
            path, "SELECT count(*), count(DISTINCT line_no) FROM km_events"
        )
        assert events == distinct == 3 * (lines // 8) + min(lines % 8, 3)


def test_a_decompression_bomb_stops_at_the_limit_with_the_setting_to_raise(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    key = "accounts-bomb.json.zst"
    s3.put_object(Bucket=bucket, Key=key, Body=compressed_bytes(b"{}\n" * 2_000_000, "zstd"))
    with (
        DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse,
        pytest.raises(UnreadableFileError, match="max_uncompressed_bytes") as raised,
    ):
        run_import(s3, warehouse, bucket, key, 1 << 20, max_uncompressed_bytes=1_000_000)
    assert "decompression bomb" in str(raised.value) and key in str(raised.value)


def test_a_stream_that_is_not_compressed_data_is_named(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    key = "accounts-fake.json.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=km_file(seed=1).data)  # plain text, .gz name
    with (
        DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse,
        pytest.raises(UnreadableFileError, match="not a valid gzip stream") as raised,
    ):
        run_import(s3, warehouse, bucket, key, 1 << 20)
    assert f"s3://{bucket}/{key}" in str(raised.value)


def test_a_compressed_file_replaced_mid_import_stops_with_its_rows_kept(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    file = km_file(seed=14, repeats=2000)
    key = "accounts-changed.json.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=compressed_bytes(file.data, "gzip"))

    def overwrite_after_first_chunk(row: Any) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=compressed_bytes(b"{}\n", "gzip"))

    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        with pytest.raises(Exception, match=rf"s3://{bucket}/{key} changed during its import"):
            run_import(
                s3,
                warehouse,
                bucket,
                key,
                16 * 1024,
                piece_bytes=16 * 1024,
                request_bytes=1024,  # small GETs: the next one meets the new ETag
                after_commit=overwrite_after_first_chunk,
            )
        [row] = warehouse.ledger_rows("accounts")
    assert row.status == "failed" and row.error and "changed during its import" in row.error
    assert 0 < row.next_offset < len(file.data)
    assert 0 < row.bytes_read < row.size_bytes and 0 < row.percent_done < 100
