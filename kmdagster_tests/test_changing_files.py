"""Files that change under the import: deleted before or during it, or replaced."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import DagsterInstance, RunRequest

from kmdagster.defs.factory import build_definitions
from kmdagster.s3.objects import S3AccessError
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import ACCOUNTS, make_config, run_import
from kmdagster_tests.ticks import run_tick, step_failure_message

FIRST, SECOND = "accounts.1.json", "accounts.2.json"
TICK = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)


def test_file_deleted_before_its_run_fails_clearly_and_the_next_tick_moves_on(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    for key, seed in ((FIRST, 1), (SECOND, 2)):
        s3.put_object(Bucket=bucket, Key=key, Body=km_file(seed=seed).data)
    defs = build_definitions(make_config(s3_server, bucket, warehouse_path))
    instance.add_dynamic_partitions(ACCOUNTS.partitions, [FIRST, SECOND])
    s3.delete_object(Bucket=bucket, Key=FIRST)  # gone while its run was queued

    result = defs.resolve_job_def(ACCOUNTS.job).execute_in_process(
        instance=instance, partition_key=FIRST, raise_on_error=False
    )

    assert not result.success
    message = step_failure_message(result)
    assert f"s3://{bucket}/{FIRST} no longer exists" in message
    assert "the next tick moves on" in message
    outcome = run_tick(defs, instance, TICK)
    assert isinstance(outcome, RunRequest) and outcome.partition_key == SECOND


def test_file_deleted_during_its_import_is_marked_failed_keeping_what_loaded(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    data = km_file(seed=3, repeats=40).data
    s3.put_object(Bucket=bucket, Key=FIRST, Body=data)

    def delete_after_first_chunk(row: Any) -> None:
        s3.delete_object(Bucket=bucket, Key=FIRST)

    missing = rf"s3://{bucket}/{FIRST} does not exist"
    with (
        DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse,
        pytest.raises(S3AccessError, match=missing),
    ):
        run_import(
            s3,
            warehouse,
            bucket,
            FIRST,
            2048,
            time_budget_seconds=600,
            request_bytes=2048,  # each chunk its own GET, which meets the deletion
            after_commit=delete_after_first_chunk,
        )
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        status, error, next_offset, loaded = con.execute(
            "SELECT status, error, next_offset, lines_loaded FROM km_import_files"
        ).fetchone()  # type: ignore[misc]
        events = con.execute("SELECT count(*) FROM km_events").fetchone()[0]  # type: ignore[index]
    assert status == "failed" and "does not exist" in error
    assert 0 < next_offset < len(data)
    assert events > 0  # the committed chunk stays, attributed to its ETag
    assert loaded > 0
