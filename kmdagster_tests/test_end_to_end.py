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
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import make_config
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
