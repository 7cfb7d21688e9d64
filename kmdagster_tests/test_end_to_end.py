"""The whole product over a real SeaweedFS bucket and a real DuckDB file.

Sensor ticks register files, schedule ticks each launch one import run, the runs load and
archive the files in alphanumeric order, and decoys are never touched.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    SkipReason,
)

from kmdagster.defs.factory import build_definitions
from kmdagster.markdown import status_markdown
from kmdagster.preview import setup_preview
from kmdagster.status import read_source_status
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import ACCOUNTS, make_config
from kmdagster_tests.ticks import run_tick

pytestmark = pytest.mark.e2e  # schedule ticks through to the archive

MATCHING = [
    "accounts.json",
    "accounts-20261126093000.json",
    "accounts 2+ü,x.json",
    "accounts.1700000000.json",
]
DECOYS = [
    "Accounts.json",
    "accounts.json.bz2",
    "accounts.csv",
    "other-accounts.json",
    "nested/accounts.json",
    "completed_imports/2026/01/01/accounts.json",
]


def table_count(warehouse_path: Path, sql: str) -> Any:
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_ticks_import_one_file_each_in_key_order_and_archive(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    files = {key: km_file(seed=i + 1) for i, key in enumerate(MATCHING)}
    for key in reversed(MATCHING):  # uploaded out of order
        s3.put_object(Bucket=bucket, Key=key, Body=files[key].data)
    for key in DECOYS:
        s3.put_object(Bucket=bucket, Key=key, Body=b'{"_p":"x","_t":1700000000,"_n":"Decoy"}\n')
    defs = build_definitions(make_config(s3_server, bucket, warehouse_path))

    tick = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
    imported_order = []
    for _ in range(len(MATCHING)):
        outcome = run_tick(defs, instance, tick)
        assert isinstance(outcome, RunRequest)
        imported_order.append(outcome.partition_key)
        tick += timedelta(hours=1)
    assert imported_order == sorted(MATCHING)

    final = run_tick(defs, instance, tick)
    assert isinstance(final, SkipReason)
    assert "nothing pending" in (final.skip_message or "")

    expected_events = sum(f.events for f in files.values())
    expected_properties = sum(f.properties for f in files.values())
    expected_aliases = sum(f.aliases for f in files.values())
    expected_rejects = sum(f.rejects for f in files.values())
    counts = table_count(
        warehouse_path,
        "SELECT (SELECT count(*) FROM km_events), (SELECT count(*) FROM km_properties), "
        "(SELECT count(*) FROM km_aliases), (SELECT count(*) FROM km_rejects)",
    )
    assert counts == [(expected_events, expected_properties, expected_aliases, expected_rejects)]
    ledger = table_count(
        warehouse_path,
        "SELECT file_key, status, archived_key, lines_read, lines_loaded + lines_rejected + "
        "lines_blank FROM km_import_files ORDER BY file_key",
    )
    assert [row[0] for row in ledger] == sorted(MATCHING)
    for file_key, status, archived_key, lines_read, accounted in ledger:
        assert status == "archived"
        assert lines_read == accounted == files[file_key].lines
        assert archived_key.startswith("completed_imports/")
        assert archived_key.endswith("/" + file_key)

    remaining = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    archived = {row[2] for row in ledger}
    assert archived <= remaining
    assert not set(MATCHING) & remaining
    assert set(DECOYS) <= remaining
    for decoy in DECOYS:
        assert s3.get_object(Bucket=bucket, Key=decoy)["Body"].read().startswith(b'{"_p":"x"')


def test_a_source_with_start_after_imports_only_the_files_after_it(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    keys = [f"accounts.{n}.json" for n in range(1, 5)]
    files = {key: km_file(seed=40 + i, repeats=3) for i, key in enumerate(keys)}
    s3.put_object(Bucket=bucket, Key=keys[0], Body=files[keys[0]].data)
    tick = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)
    # Before the setting: the first file's run stops on its budget after one chunk.
    cut = make_config(s3_server, bucket, warehouse_path, chunk_bytes=1024, time_budget_seconds=1e-6)
    first = run_tick(build_definitions(cut), instance, tick)
    assert isinstance(first, RunRequest) and first.partition_key == keys[0]
    [(status, offset, loaded)] = table_count(
        warehouse_path, "SELECT status, next_offset, lines_loaded FROM km_import_files"
    )
    assert status == "in_progress" and 0 < offset < len(files[keys[0]].data)

    for key in keys[1:]:  # sent after the first file was registered
        s3.put_object(Bucket=bucket, Key=key, Body=files[key].data)
    config = make_config(s3_server, bucket, warehouse_path, start_after=keys[1])
    source = config.sources[0]
    preview = setup_preview(s3, source)
    assert preview.file.key == keys[2]  # the first key after start_after
    defs = build_definitions(config)
    imported = []
    outcome: RunRequest | SkipReason | None = None
    for _ in range(3):
        tick += timedelta(hours=1)
        outcome = run_tick(defs, instance, tick)
        if isinstance(outcome, SkipReason):
            break
        imported.append(outcome.partition_key)
    assert imported == keys[2:]
    assert isinstance(outcome, SkipReason) and "nothing pending" in (outcome.skip_message or "")
    # Registered: the first file (before the setting) and those after it, never the second.
    assert sorted(instance.get_dynamic_partitions(ACCOUNTS.partitions)) == [keys[0], *keys[2:]]
    ledger = table_count(
        warehouse_path,
        "SELECT file_key, status, next_offset, lines_loaded FROM km_import_files ORDER BY 1",
    )
    # The file partly imported before the setting stays where it stopped, untouched.
    assert ledger[0] == (keys[0], "in_progress", offset, loaded)
    assert [(key, status) for key, status, *_ in ledger[1:]] == [
        (keys[2], "archived"),
        (keys[3], "archived"),
    ]
    at_root = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(keys[:2]) <= at_root and not set(keys[2:]) & at_root

    found = read_source_status(s3, source, config.warehouse, 5.0)
    assert found.before_start == 2
    assert [state.key for state in found.states] == keys[2:]
    assert "Before start_after: 2 files" in status_markdown(
        source, found.states, 0, None, before_start=2
    )
