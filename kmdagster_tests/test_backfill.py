"""Dagster's own backfill of a source's files: its runs take ranges of partitions (the
import asset's backfill policy), import them in key order, each file on its own
partition, archive them, and fail saying why when a file of the range is not done; a
backfill and the schedule never import one source at once."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.runs import MAX_RUNTIME_TAG, ONE_WRITER_TAG, OUTCOME_TAG, SOURCE_TAG
from kmdagster.faults import CRASH_ENV
from kmdagster.status import import_now_advice
from kmdagster.warehouse.schema import ROW_TABLES
from kmdagster_dev.km_files import KmFile, km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.dead_runs import DEAD_RUN_MAX_RUNTIME, fail_dead_runs, make_dagster_home
from kmdagster_tests.helpers import ACCOUNTS, make_config, warehouse_rows, write_config
from kmdagster_tests.run_import_job import RANGE, backfill_run_tags, spawn_import_job
from kmdagster_tests.test_catch_up import (
    archived_keys,
    assert_every_line_once,
    imported_in_order,
    passed_check_partitions,
    put_files,
)
from kmdagster_tests.test_setup import run_cli
from kmdagster_tests.ticks import report_sensor_tick


def run_range(defs: Any, instance: DagsterInstance, keys: list[str], backfill: str = "b1") -> Any:
    """One run of the import job over keys[0]..keys[-1], as Dagster's backfill launches it."""
    job = defs.resolve_job_def(ACCOUNTS.job)
    return job.execute_in_process(
        instance=instance, tags=backfill_run_tags(keys[0], keys[-1], backfill), raise_on_error=False
    )


@pytest.fixture
def warehouse(tmp_path: Path) -> WarehouseSettings:
    return WarehouseSettings(duckdb_path=str(tmp_path / "warehouse.duckdb"))


def registered(
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    instance: DagsterInstance,
    warehouse: WarehouseSettings,
    files: dict[str, KmFile],
    **settings: Any,
) -> Any:
    """The source's definitions, its files uploaded and registered by a sensor tick."""
    put_files(s3, bucket, files)
    defs = build_definitions(make_config(s3_server, bucket, warehouse, **settings))
    report_sensor_tick(defs, instance)
    return defs


def test_the_import_asset_takes_a_backfill_in_ranges_of_backfill_files_per_run(
    warehouse: WarehouseSettings,
    s3_server: SeaweedS3,
    bucket: str,
) -> None:
    defs = build_definitions(make_config(s3_server, bucket, warehouse, backfill_files_per_run=7))
    for key in (ACCOUNTS.table("km_events"), ACCOUNTS.archive):
        policy = defs.resolve_assets_def(key).backfill_policy
        assert policy is not None and policy.max_partitions_per_run == 7, key


def test_a_backfill_run_imports_its_range_in_key_order_each_file_on_its_partition(
    warehouse: WarehouseSettings,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    instance: DagsterInstance,
) -> None:
    files = {f"accounts.{i:02d}.json": km_file(seed=i, repeats=1) for i in range(12)}
    defs = registered(s3_server, s3, bucket, instance, warehouse, files)
    keys = sorted(files)
    # Dynamic partitions keep the order they were added in: a range spans them in that order.
    first, second = keys[:8], keys[8:]
    for part in (second, first):
        assert run_range(defs, instance, part).success

    assert imported_in_order(warehouse) == second + first  # each range in key order
    for table in ROW_TABLES:
        assert instance.get_materialized_partitions(ACCOUNTS.table(table)) == set(files), table
    assert instance.get_materialized_partitions(ACCOUNTS.archive) == set(files)
    assert passed_check_partitions(instance) == set(files)
    assert_every_line_once(warehouse, files)
    assert archived_keys(s3, bucket)[0] == []
    runs = instance.get_runs()
    assert sorted(run.tags[OUTCOME_TAG] for run in runs) == ["4 files of 4 imported"] + [
        "8 files of 8 imported"
    ]
    # Launched without the job's tags, each run said which source it imports, and kept a
    # max runtime ahead of it (run monitoring fails the run if its process dies).
    assert {run.tags[SOURCE_TAG] for run in runs} == {"accounts"}
    allowance = 300 + 900  # the default budget and run_grace_seconds
    assert all(int(run.tags[MAX_RUNTIME_TAG]) >= 2 * allowance for run in runs)


def test_a_backfill_run_cut_by_a_files_budget_archives_the_rest_and_fails_naming_them(
    warehouse: WarehouseSettings,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    instance: DagsterInstance,
) -> None:
    small = km_file(seed=5, repeats=2)
    large = km_file(seed=6, repeats=17_000)  # 10 MB in 1 KB chunks: never inside 3 seconds
    files = {"accounts.1.json": small, "accounts.2.json": large, "accounts.3.json": small}
    defs = registered(
        s3_server, s3, bucket, instance, warehouse, files, time_budget_seconds=3, chunk_bytes=1024
    )

    result = run_range(defs, instance, sorted(files))
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "2 files of this run's 3 are not fully imported (accounts.2.json, accounts.3.json)" in (
        message
    )
    assert "accounts.2.json stopped on its time budget at " in message  # why, in words
    assert "takes s3://" in message and "re-run the backfill's failed partitions" in message
    ledger = dict(warehouse_rows(warehouse, "SELECT file_key, status FROM km_import_files"))
    # Key order: the file after the cut one waits for it.
    assert ledger == {"accounts.1.json": "archived", "accounts.2.json": "in_progress"}
    assert instance.get_materialized_partitions(ACCOUNTS.archive) == {"accounts.1.json"}
    assert instance.get_materialized_partitions(ACCOUNTS.table("km_events")) == {"accounts.1.json"}
    [run] = instance.get_runs()
    assert run.tags[OUTCOME_TAG].startswith("1 file imported, then stopped on budget at ")


def test_a_run_of_a_source_launched_second_imports_nothing_and_says_which_run_holds_it(
    warehouse: WarehouseSettings,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    instance: DagsterInstance,
) -> None:
    files = {f"accounts.{i}.json": km_file(seed=i, repeats=1) for i in range(3)}
    defs = registered(s3_server, s3, bucket, instance, warehouse, files)
    job = defs.resolve_job_def(ACCOUNTS.job)
    # A scheduled run of the source, going (its worker on another machine, say).
    holder = instance.create_run_for_job(job, tags={SOURCE_TAG: "accounts"})
    instance.handle_run_event(holder.run_id, _started(holder))

    result = run_range(defs, instance, sorted(files))
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert f"run {holder.run_id} of source 'accounts' is STARTED and was launched first" in (
        message
    )
    assert "this run imported nothing" in message
    assert warehouse_rows(warehouse, "SELECT count(*) FROM km_import_files") == [(0,)]


def _started(run: Any) -> Any:
    from dagster import DagsterEvent, DagsterEventType

    return DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name)


@pytest.mark.slow
def test_a_backfill_run_killed_midway_is_finished_by_its_retry_every_line_once(
    tmp_path: Path,
    warehouse: WarehouseSettings,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = {f"accounts.{i:03d}.json": km_file(seed=i, repeats=1) for i in range(40)}
    put_files(s3, bucket, files)
    # A run's allowance of two seconds a file: run monitoring fails the killed run soon
    # after its last file (each file, one chunk, completes whatever its budget).
    config = make_config(s3_server, bucket, warehouse, time_budget_seconds=1, run_grace_seconds=1)
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    defs = build_definitions(config)
    keys = sorted(files)
    with DagsterInstance.from_config(str(home)) as instance:
        report_sensor_tick(defs, instance)
        # The backfill's run dies (kill -9) after committing its 25th file, before it told
        # Dagster of it or archived any.
        env = {
            **os.environ,
            "KMDAGSTER_CONFIG": str(write_config(tmp_path / "kmdagster.yaml", config)),
            CRASH_ENV: "import.chunk_committed:25",
        }
        killed = spawn_import_job(
            f"{keys[0]}{RANGE}{keys[-1]}", DEAD_RUN_MAX_RUNTIME, env, tmp_path / "job.stderr"
        )
        assert killed.wait(timeout=300) == -signal.SIGKILL, "the crash point was never reached"
        assert imported_in_order(warehouse) == keys[:25]
        assert fail_dead_runs(instance) == 1
        # Dagster shows the dead run failed; the backfill's retry of its range finishes it.
        assert run_range(defs, instance, keys, backfill="killed").success
        for table in ROW_TABLES:
            assert instance.get_materialized_partitions(ACCOUNTS.table(table)) == set(files)
        assert instance.get_materialized_partitions(ACCOUNTS.archive) == set(files)
        failed = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        assert len(failed) == 1

    statuses = warehouse_rows(
        warehouse, "SELECT status, count(*), sum(import_runs) FROM km_import_files GROUP BY 1"
    )
    # Every file once: the 25 the killed run committed were not read again.
    assert statuses == [("archived", 40, 40)]
    assert_every_line_once(warehouse, files)
    assert archived_keys(s3, bucket)[0] == []


def test_kmdagster_backfill_records_a_backfill_of_the_waiting_files_and_says_when_none_wait(
    tmp_path: Path,
    warehouse: WarehouseSettings,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = {f"accounts.{i}.json": km_file(seed=i, repeats=1) for i in range(5)}
    put_files(s3, bucket, files)
    config = make_config(s3_server, bucket, warehouse, backfill_files_per_run=2)
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(write_config(tmp_path / "kmdagster.yaml", config)))
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    defs = build_definitions(config)
    keys = sorted(files)
    with DagsterInstance.from_config(str(home)) as instance:
        report_sensor_tick(defs, instance)
        assert run_range(defs, instance, keys[:1]).success  # one file archived already
        # Asked how to import the rest now, status names the command.
        code, out, _ = run_cli(capsys, "status", "accounts")
        assert code == 0
        assert "`kmdagster backfill accounts` (Dagster's backfill, 2 runs of up to 2 files" in out
        code, out, _ = run_cli(capsys, "backfill", "accounts")
        assert code == 0
        [backfill] = instance.get_backfills()
        assert out.startswith(f"backfill {backfill.backfill_id}: 4 files of accounts")
        assert "in 2 runs of up to 2" in out
        target = backfill.asset_backfill_data.target_subset  # type: ignore[union-attr]
        wanted = {*(ACCOUNTS.table(table) for table in ROW_TABLES), ACCOUNTS.archive}
        assert target.asset_keys == wanted
        for key in wanted:
            assert set(target.get_partitions_subset(key).get_partition_keys()) == set(keys[1:])
        assert backfill.tags[SOURCE_TAG] == "accounts"
        assert backfill.tags[ONE_WRITER_TAG] == "true"  # the run queue's one-writer limit

        for key in keys[1:]:
            s3.delete_object(Bucket=bucket, Key=key)
        code, _, err = run_cli(capsys, "backfill", "accounts")
        assert code != 0
        assert "nothing waits at the root of s3://" in err


@pytest.mark.parametrize(
    ("waiting", "per_tick", "advice"),
    [
        (1, 1, None),
        (50, 50, None),  # the next tick takes them all
        (2, 1, "to import the 2 waiting files now, not 1 a tick: `kmdagster backfill accounts` "
         "(Dagster's backfill, 1 run of up to 500 files in key order), or raise "
         "max_files_per_run so that each tick takes more"),
        (1001, 50, "to import the 1,001 waiting files now, not 50 a tick: `kmdagster backfill "
         "accounts` (Dagster's backfill, 3 runs of up to 500 files"),
    ],
)  # fmt: skip
def test_where_files_wait_the_advice_names_the_backfill_and_the_catch_up_setting(
    waiting: int, per_tick: int, advice: str | None
) -> None:
    source = SourceConfig(
        name="accounts", bucket="b", base_filename="accounts.json", max_files_per_run=per_tick
    )
    found = import_now_advice(source, waiting)
    assert found == advice if advice is None else (found or "").startswith(advice)
