"""Catch-up: with ``max_files_per_run`` over 1, one run imports several pending files in
key order within its one time budget, each its own partition materialization and ledger
row, with the exactly-once and resume rules of a run of one file."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SkipReason,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from pydantic import ValidationError

from kmdagster.config import KmConfig, WarehouseSettings
from kmdagster.defs.checks import ROWS_MATCH_LEDGER
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.runs import CAUGHT_UP_TAG, OUTCOME_TAG
from kmdagster.faults import CRASH_ENV
from kmdagster.s3.objects import ARCHIVE_PREFIX
from kmdagster.warehouse.file_rows import ROW_IDENTITY
from kmdagster.warehouse.schema import ROW_TABLES
from kmdagster_dev.km_files import KmFile, km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.dead_runs import DEAD_RUN_MAX_RUNTIME, fail_dead_runs, make_dagster_home
from kmdagster_tests.helpers import ACCOUNTS, make_config, warehouse_rows, write_config
from kmdagster_tests.run_import_job import spawn_import_job
from kmdagster_tests.ticks import report_sensor_tick, run_tick

FIRST_TICK = datetime(2026, 12, 1, tzinfo=timezone.utc)
# Two runs of thirty after the killed one (the first takes up again the files it
# committed): a file costs a run about a quarter of a second, half of it the events
# Dagster stores for it, so the history of benchmarks/history.py (2,000 files, every line
# checked once too) would take this suite over eight minutes.
BACKLOG = 60
PER_RUN = 30
KILLED_AFTER = 20  # files the first run commits before it is killed


def put_files(s3: Any, bucket: str, files: dict[str, KmFile]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=files[k].data), files))


def tick_until_nothing_pending(defs: Any, instance: DagsterInstance, most: int) -> list[str]:
    """The partitions of the runs the schedule launches, one tick an hour, until none."""
    partitions, tick = [], FIRST_TICK
    for _ in range(most):
        outcome = run_tick(defs, instance, tick)
        if isinstance(outcome, SkipReason):
            assert "nothing pending" in (outcome.skip_message or ""), outcome.skip_message
            return partitions
        assert isinstance(outcome, RunRequest) and outcome.partition_key is not None
        partitions.append(outcome.partition_key)
        tick += timedelta(hours=1)
    raise AssertionError(f"files still pending after {most} ticks")


def assert_every_line_once(warehouse: WarehouseSettings, files: dict[str, KmFile]) -> None:
    """Each table holds each file's expected rows, none twice, in a query per table."""
    for table, identity in ROW_IDENTITY.items():
        counted = {
            key: (total, distinct)
            for key, total, distinct in warehouse_rows(
                warehouse,
                f"SELECT file_key, count(*), count(DISTINCT ({identity})) FROM {table} "
                "GROUP BY file_key",
            )
        }
        wanted = {key: (file.rows[table],) * 2 for key, file in files.items()}
        assert counted == {k: v for k, v in wanted.items() if v[0]}, table


def imported_in_order(warehouse: WarehouseSettings) -> list[str]:
    """Keys in the order their imports opened them (ledger ids come from a sequence)."""
    rows = warehouse_rows(warehouse, "SELECT file_key FROM km_import_files ORDER BY file_id")
    return [key for (key,) in rows]


def passed_check_partitions(instance: DagsterInstance) -> set[str]:
    """The files whose rows_match_ledger check on km_events passed, as Dagster records it."""
    check = AssetCheckKey(ACCOUNTS.table("km_events"), ROWS_MATCH_LEDGER)
    records = instance.event_log_storage.get_asset_check_execution_history(check, limit=10_000)
    passed = AssetCheckExecutionRecordStatus.SUCCEEDED
    return {r.partition for r in records if r.status == passed and r.partition is not None}


def archived_keys(s3: Any, bucket: str) -> tuple[list[str], list[str]]:
    """(keys still at the bucket root, archived copies) of the bucket's files."""
    paginator = s3.get_paginator("list_objects_v2")
    keys = [
        o["Key"] for page in paginator.paginate(Bucket=bucket) for o in page.get("Contents", [])
    ]
    archived = [k for k in keys if k.startswith(ARCHIVE_PREFIX) and k.endswith(".json")]
    return [k for k in keys if not k.startswith(ARCHIVE_PREFIX)], archived


def test_a_backlog_catches_up_thirty_files_a_run_in_key_order_through_a_kill(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two kinds of small file: with rejects (a rejects file beside the archive) and without.
    dirty, clean = km_file(seed=3, repeats=1), km_file(seed=4, repeats=1)
    clean = KmFile(
        data=b"\n".join(clean.data.splitlines()[:5]) + b"\n",
        lines=5,
        events=3,
        properties=3,
        aliases=1,
        rejects=0,
        blanks=0,
    )
    files = {f"accounts.{i:04d}.json": dirty if i % 10 == 0 else clean for i in range(BACKLOG)}
    put_files(s3, bucket, files)
    warehouse = WarehouseSettings(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    config = make_config(s3_server, bucket, warehouse, max_files_per_run=PER_RUN)
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    defs = build_definitions(config)
    with DagsterInstance.from_config(str(home)) as instance:
        report_sensor_tick(defs, instance)
        assert len(instance.get_dynamic_partitions(ACCOUNTS.partitions)) == BACKLOG

        # The first run dies (kill -9) after committing its 20th file, before it told
        # Dagster of any follow-on file or archived any.
        env = {
            **os.environ,
            "KMDAGSTER_CONFIG": str(write_config(tmp_path / "kmdagster.yaml", config)),
            CRASH_ENV: f"import.chunk_committed:{KILLED_AFTER}",
        }
        killed = spawn_import_job(
            "accounts.0000.json", DEAD_RUN_MAX_RUNTIME, env, tmp_path / "job.stderr"
        )
        assert killed.wait(timeout=300) == -signal.SIGKILL, "the crash point was never reached"
        assert imported_in_order(warehouse) == sorted(files)[:KILLED_AFTER]
        assert fail_dead_runs(instance) == 1

        partitions = tick_until_nothing_pending(defs, instance, most=BACKLOG // PER_RUN + 5)
        # Each run starts at the first file left and takes thirty: the files the killed run
        # committed are taken again (loading nothing), so the runs start at 0, 30, 60...
        assert partitions == [f"accounts.{i:04d}.json" for i in range(0, BACKLOG, PER_RUN)]

        runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
        assert len(runs) == BACKLOG // PER_RUN
        assert {run.tags[OUTCOME_TAG] for run in runs} == {f"{PER_RUN} files imported"}
        # What each run's import step handed its archive step: the last of its thirty.
        last_of_each = {f"accounts.{i + PER_RUN - 1:04d}.json" for i in range(0, BACKLOG, PER_RUN)}
        assert {run.tags[CAUGHT_UP_TAG] for run in runs} == last_of_each
        for table in ROW_TABLES:
            materialized = instance.get_materialized_partitions(ACCOUNTS.table(table))
            assert materialized == set(files), table
        assert instance.get_materialized_partitions(ACCOUNTS.archive) == set(files)
        assert passed_check_partitions(instance) == set(files)

    assert imported_in_order(warehouse) == sorted(files)
    statuses = warehouse_rows(
        warehouse, "SELECT status, count(*), sum(import_runs) FROM km_import_files GROUP BY 1"
    )
    # Every file once, in one run but those the killed run committed before dying.
    assert statuses == [("archived", BACKLOG, BACKLOG)]
    assert_every_line_once(warehouse, files)
    at_root, archived = archived_keys(s3, bucket)
    assert at_root == []
    assert sorted(k.rsplit("/", 1)[1] for k in archived) == sorted(files)


def test_a_file_the_budget_cuts_in_a_catch_up_run_resumes_first(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str, instance: DagsterInstance
) -> None:
    small = km_file(seed=5, repeats=2)
    # 1 KB chunks: about 10,000 commits, far more than a 5-second budget holds anywhere.
    large = km_file(seed=6, repeats=17_000)  # 10 MB
    files = {"accounts.1.json": small, "accounts.2.json": large, "accounts.3.json": small}
    put_files(s3, bucket, files)
    warehouse = WarehouseSettings(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    config = make_config(
        s3_server, bucket, warehouse, max_files_per_run=3, time_budget_seconds=5, chunk_bytes=1024
    )
    defs = build_definitions(config)
    first = run_tick(defs, instance, FIRST_TICK)
    assert isinstance(first, RunRequest) and first.partition_key == "accounts.1.json"
    [run] = instance.get_runs()
    assert run.tags[OUTCOME_TAG].startswith("1 file imported, then stopped on budget at ")
    assert run.tags[OUTCOME_TAG].endswith("% of accounts.2.json")
    ledger = dict(warehouse_rows(warehouse, "SELECT file_key, status FROM km_import_files"))
    assert ledger == {"accounts.1.json": "archived", "accounts.2.json": "in_progress"}
    assert instance.get_materialized_partitions(ACCOUNTS.archive) == {"accounts.1.json"}
    assert instance.get_materialized_partitions(ACCOUNTS.table("km_events")) == {"accounts.1.json"}

    # The cut file is the next run's own, then the one after it follows in that run.
    more = _with_source(config, chunk_bytes=8 * 1024 * 1024, time_budget_seconds=600)
    finish = build_definitions(more)
    rest = tick_until_nothing_pending(finish, instance, most=5)
    assert rest == ["accounts.2.json"]
    assert imported_in_order(warehouse) == sorted(files)
    assert_every_line_once(warehouse, files)
    runs = warehouse_rows(
        warehouse, "SELECT file_key, import_runs FROM km_import_files ORDER BY file_key"
    )
    assert runs == [("accounts.1.json", 1), ("accounts.2.json", 2), ("accounts.3.json", 1)]
    assert passed_check_partitions(instance) == set(files)  # the follow-on files' too
    assert archived_keys(s3, bucket)[0] == []


def _with_source(config: KmConfig, **settings: Any) -> KmConfig:
    source = config.sources[0].model_copy(update=settings)
    return config.model_copy(update={"sources": (source,)})


def test_one_file_per_run_is_the_default_and_none_is_refused() -> None:
    source = {"name": "accounts", "bucket": "b", "base_filename": "accounts.json"}
    assert KmConfig.model_validate({"sources": [source]}).sources[0].max_files_per_run == 1
    with pytest.raises(ValidationError, match="max_files_per_run"):
        KmConfig.model_validate({"sources": [{**source, "max_files_per_run": 0}]})
