"""One import per source at a time: the run queue's tag limits, and the ledger's
conditional update underneath them for runs launched around the queue."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, instance_for_test

from kmdagster.defs.runs import ONE_WRITER_TAG, SOURCE_TAG
from kmdagster.faults import CRASH_ENV
from kmdagster.instance_settings import INSTANCE_SETTINGS, instance_settings_yaml
from kmdagster.km_format.split import split_km_lines
from kmdagster.warehouse.backends import open_warehouse
from kmdagster.warehouse.warehouse import DuckDBWarehouse, LedgerConflict
from kmdagster_dev.instance_yaml import deploy_instance_settings
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.dead_runs import DEAD_RUN_MAX_RUNTIME, fail_dead_runs, make_dagster_home
from kmdagster_tests.helpers import ACCOUNTS, make_config, plain_piece_end, write_config
from kmdagster_tests.run_import_job import spawn_import_job
from kmdagster_tests.ticks import run_partition

ROOT = Path(__file__).resolve().parent.parent
KEY = "accounts.20261126.json"


def test_deploy_dagster_yaml_limits_one_run_per_source_and_per_warehouse() -> None:
    settings = deploy_instance_settings()
    del settings["storage"]  # PostgreSQL: the end-to-end test on PostgreSQL takes it whole
    with instance_for_test(overrides=settings) as instance:
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits  # type: ignore[attr-defined]
        assert instance.run_monitoring_enabled
    by_key = {limit["key"]: limit for limit in limits}
    assert by_key[SOURCE_TAG]["limit"] == 1
    assert by_key[SOURCE_TAG]["value"] == {"applyLimitPerUniqueValue": True}
    assert by_key[ONE_WRITER_TAG] == {"key": ONE_WRITER_TAG, "value": "true", "limit": 1}


def test_instance_settings_printed_for_any_project_are_deploy_dagster_yamls() -> None:
    """`kmdagster instance-settings` (what a dg project puts in its instance) carries the
    queue limits and run monitoring of deploy/dagster.yaml, the same values."""
    deployed = deploy_instance_settings()
    assert {key: deployed[key] for key in INSTANCE_SETTINGS} == INSTANCE_SETTINGS
    printed = yaml.safe_load(instance_settings_yaml())
    assert printed == INSTANCE_SETTINGS


def test_a_run_launched_beside_a_dead_one_is_refused_then_resumes_from_the_ledger(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str
) -> None:
    """Around the queue, a second run of the source while a dead one still says STARTED is
    refused, naming the run; once run monitoring has failed the dead one, the ledger, not
    any run's status, decides where the next starts."""
    data = km_file(seed=9, repeats=40)
    s3.put_object(Bucket=bucket, Key=KEY, Body=data.data)
    warehouse_path = tmp_path / "warehouse.duckdb"
    config = make_config(s3_server, bucket, warehouse_path, chunk_bytes=1024)
    home = make_dagster_home(tmp_path)
    env = {
        **os.environ,
        "KMDAGSTER_CONFIG": str(write_config(tmp_path / "kmdagster.yaml", config)),
        "DAGSTER_HOME": str(home),
        CRASH_ENV: "import.chunk_committed:2",  # leaves a STARTED run holding two chunks
    }
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])
        job = spawn_import_job(KEY, DEAD_RUN_MAX_RUNTIME, env, tmp_path / "job.stderr")
        assert job.wait(timeout=180) == -signal.SIGKILL
        [dead] = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        with duckdb.connect(str(warehouse_path), read_only=True) as con:
            (dead_run_lines,) = con.execute("SELECT lines_read FROM km_import_files").fetchone()  # type: ignore[misc]

        refused = run_partition(config, instance, KEY)
        assert not refused.success
        [failure] = [e for e in refused.all_events if e.is_step_failure]
        message = failure.step_failure_data.error.message  # type: ignore[union-attr]
        assert f"run {dead.run_id} of source 'accounts' is STARTED" in message
        assert "run monitoring fails it" in message
        assert fail_dead_runs(instance) == 1
        second = run_partition(config, instance, KEY)

    assert second.success
    assert 0 < dead_run_lines < data.lines  # the dead run's two chunks stayed committed
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        (lines_read, status) = con.execute(
            "SELECT lines_read, status FROM km_import_files"
        ).fetchone()  # type: ignore[misc]
        (distinct, total) = con.execute(
            "SELECT count(DISTINCT line_no), count(*) FROM km_events"
        ).fetchone()  # type: ignore[misc]
    assert (lines_read, status) == (data.lines, "archived")
    assert distinct == total == data.events


def test_two_importers_of_one_file_never_commit_the_same_chunk_twice(tmp_path: Path) -> None:
    split = split_km_lines(km_file(seed=1).data, 1, 1_800_000_000)
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        chunk = warehouse.lay_out(split)
        row = warehouse.open_file("accounts", KEY, '"etag"', 10_000)
        stale = warehouse.ledger_row("accounts", KEY, '"etag"')
        assert stale is not None
        warehouse.commit_chunk(
            row, [(chunk, plain_piece_end(5_000, row.size_bytes))], run_id="test"
        )
        with pytest.raises(LedgerConflict, match="moved past offset 0 in another import"):
            warehouse.commit_chunk(
                stale, [(chunk, plain_piece_end(5_000, row.size_bytes))], run_id="test"
            )
        events = warehouse.database.connection.execute("SELECT count(*) FROM km_events").fetchone()
    assert events == (split.events.height,)


def test_a_stale_importer_is_refused_and_its_rolled_back_rows_never_show(
    warehouse_settings: Any,
) -> None:
    """The refused chunk's inserts come before its ledger update: its rollback must take
    them back (on PostgreSQL a timestamp bound by the driver once committed them)."""
    split = split_km_lines(km_file(seed=1).data, 1, 1_800_000_000)
    with open_warehouse(warehouse_settings) as warehouse:
        chunk = warehouse.lay_out(split)
        row = warehouse.open_file("accounts", KEY, '"etag"', 10_000)
        stale = warehouse.ledger_row("accounts", KEY, '"etag"')
        assert stale is not None
        warehouse.commit_chunk(
            row, [(chunk, plain_piece_end(5_000, row.size_bytes))], run_id="run-1"
        )
        with pytest.raises(LedgerConflict, match="moved past offset 0 in another import"):
            warehouse.commit_chunk(
                stale, [(chunk, plain_piece_end(5_000, row.size_bytes))], run_id="run-2"
            )
        assert warehouse.runs_that_advanced("accounts", KEY, '"etag"', ["run-1", "run-2"]) == {
            "run-1"
        }
        [(events,)] = warehouse.database.rows("SELECT count(*) FROM km_events")
    assert events == split.events.height
