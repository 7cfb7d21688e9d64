"""Kill -9 at any instant: the import job runs in a subprocess over SeaweedFS and a
warehouse (a DuckDB file, a PostgreSQL database), dies at a named crash point or after a
random delay, then the schedule finishes the file. Every scenario must end with each line
accounted for exactly once and the file archived exactly once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunRequest, RunsFilter, SkipReason

from kmdagster.config import WarehouseSettings
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.run_history import RunProgress, quarantined_files
from kmdagster.faults import CRASH_ENV, CRASH_POINTS
from kmdagster.s3.objects import ARCHIVE_PREFIX
from kmdagster.s3.rejects_file import rejects_key_for
from kmdagster_dev.km_files import COMPRESSION_TOOLS, KmFile, compressed_bytes, km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.dead_runs import DEAD_RUN_MAX_RUNTIME, fail_dead_runs, make_dagster_home
from kmdagster_tests.helpers import (
    ACCOUNTS,
    BACKENDS,
    assert_file_loaded_once,
    make_config,
    warehouse_rows,
    write_config,
)
from kmdagster_tests.run_import_job import spawn_import_job
from kmdagster_tests.ticks import evaluate_schedule, run_tick

pytestmark = pytest.mark.slow  # subprocess imports killed at each crash point: minutes

ROOT = Path(__file__).resolve().parent.parent
KEY = "accounts.20261126.json"

# (crash point, nth pass, chunk_bytes, time budget): small chunks make many commits.
DETERMINISTIC = [
    ("schema.in_transaction", 1, 1024, 600),
    ("import.chunk_read", 1, 1024, 600),
    ("import.chunk_read", 7, 1024, 600),
    ("commit_chunk.in_transaction", 1, 1024, 600),
    ("commit_chunk.in_transaction", 6, 1024, 600),
    ("commit_chunk.in_transaction", 20, 1024, 600),
    ("commit_chunk.aliases_committed", 1, 1024, 600),
    ("commit_chunk.aliases_committed", 6, 1024, 600),
    ("import.chunk_committed", 1, 1024, 600),
    ("import.chunk_committed", 11, 1024, 600),
    ("asset.before_progress_event", 1, 1024, 600),
    ("asset.before_progress_event", 1, 8192, 0.001),  # budget stop: the hint goes unrecorded
    ("archive.copied", 1, 1024, 600),
    ("archive.rejects_written", 1, 1024, 600),
    ("archive.recorded", 1, 1024, 600),
]
# Random instants on each backend: the crash points above cover PostgreSQL's every step.
RANDOM_SCENARIOS = {"duckdb": 6, "postgres": 3, "ducklake": 2}
# On PostgreSQL, every point where the warehouse is written or read back; the S3-only
# steps of the archive and the repeats deeper into the file run on DuckDB alone.
S3_ONLY_OR_REPEATED = {
    ("archive.copied", 1),
    ("archive.rejects_written", 1),
    ("import.chunk_read", 7),
    ("import.chunk_committed", 11),
}
# On the lake, the points where its writes differ from the others' (schema creation, the
# chunk's transaction and revision, the archive's ledger revision) and a chunk deep in.
LAKE_POINTS = {
    ("commit_chunk.aliases_committed", 1),
    ("commit_chunk.aliases_committed", 6),
    ("schema.in_transaction", 1),
    ("commit_chunk.in_transaction", 1),
    ("commit_chunk.in_transaction", 6),
    ("import.chunk_committed", 1),
    ("asset.before_progress_event", 1),
    ("archive.recorded", 1),
}
# Passed on a lake alone: the merge of alias groups apart from the chunk's commit.
LAKE_ONLY = {"commit_chunk.aliases_committed"}
CRASH_SCENARIOS = [
    pytest.param(
        backend, point, nth, chunk, budget, id=f"{backend}-{point}:{nth}-{chunk}B-{budget}s"
    )
    for backend in ("duckdb", "postgres", "ducklake")
    for point, nth, chunk, budget in DETERMINISTIC
    if (backend == "duckdb" and point not in LAKE_ONLY)
    or (
        backend == "postgres" and (point, nth) not in S3_ONLY_OR_REPEATED and point not in LAKE_ONLY
    )
    or (backend == "ducklake" and (point, nth) in LAKE_POINTS and budget > 1)
]


@pytest.fixture
def source_file() -> KmFile:
    return km_file(seed=7, repeats=40)  # 320 lines, about 25 KB


def start_job(env: dict[str, str], stderr_path: Path) -> subprocess.Popen[str]:
    return spawn_import_job(KEY, DEAD_RUN_MAX_RUNTIME, env, stderr_path)


def finish_with_schedule(defs: Any, instance: DagsterInstance) -> int:
    """Tick until the schedule has nothing left; returns the number of runs."""
    tick = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
    for runs in range(60):
        outcome = run_tick(defs, instance, tick)
        if isinstance(outcome, SkipReason):
            assert "nothing pending" in (outcome.skip_message or ""), outcome.skip_message
            return runs
        assert isinstance(outcome, RunRequest)
        tick += timedelta(hours=1)
    raise AssertionError("the schedule never finished the file")


def assert_exactly_once(
    s3: Any, bucket: str, warehouse: WarehouseSettings, expected: KmFile, key: str, body: bytes
) -> None:
    assert_file_loaded_once(warehouse, key, expected)
    # Every alias line's pair merged into the groups: one group each in these files.
    [(groups,)] = warehouse_rows(
        warehouse, "SELECT count(DISTINCT person_id) FROM km_identity_groups"
    )
    assert groups == expected.aliases
    ledger = warehouse_rows(warehouse, "SELECT status, archived_key FROM km_import_files")
    assert len(ledger) == 1
    status, archived_key = ledger[0]
    assert status == "archived"
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    archived = [key for key in keys if key.startswith(ARCHIVE_PREFIX)]
    assert archived == [archived_key, rejects_key_for(archived_key)]
    assert key not in keys
    assert s3.get_object(Bucket=bucket, Key=archived_key)["Body"].read() == body
    rejects_file = s3.get_object(Bucket=bucket, Key=rejects_key_for(archived_key))["Body"].read()
    line_numbers = [json.loads(line)["line_no"] for line in rejects_file.splitlines()]
    assert len(line_numbers) == len(set(line_numbers)) == expected.rejects


def run_scenario(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    expected: KmFile,
    warehouse: WarehouseSettings,
    chunk_bytes: int,
    budget: float,
    crash_at: str | None = None,
    kill_after: float | None = None,
    compression: str | None = None,
) -> int | None:
    """Kill one run, recover like the daemon, finish the file; returns the killed run's code."""
    key = KEY + (COMPRESSION_TOOLS[compression][0] if compression else "")
    body = compressed_bytes(expected.data, compression) if compression else expected.data
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    config = make_config(
        s3_server, bucket, warehouse, chunk_bytes=chunk_bytes, time_budget_seconds=budget
    )
    home = make_dagster_home(tmp_path)
    env = {
        **os.environ,
        "KMDAGSTER_CONFIG": str(write_config(tmp_path / "kmdagster.yaml", config)),
        "DAGSTER_HOME": str(home),
    }
    if crash_at:
        env[CRASH_ENV] = crash_at
    defs = build_definitions(config)
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(ACCOUNTS.partitions, [key])
        job = spawn_import_job(key, DEAD_RUN_MAX_RUNTIME, env, tmp_path / "job.stderr")
        if kill_after is not None:
            assert job.stdout is not None and job.stdout.readline().strip() == "READY"
            time.sleep(kill_after)
            job.send_signal(signal.SIGKILL)
        code = job.wait(timeout=180)
        fail_dead_runs(instance)
        finish_with_schedule(defs, instance)
    assert_exactly_once(s3, bucket, warehouse, expected, key, body)
    return code


def test_crash_points_cover_every_named_point() -> None:
    assert {point for point, *_ in DETERMINISTIC} == set(CRASH_POINTS)


@pytest.fixture
def kill_scenario(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    source_file: KmFile,
    warehouse_settings: WarehouseSettings,
) -> Callable[..., int | None]:
    """``run_scenario`` for this test's bucket, file and warehouse."""
    return partial(run_scenario, tmp_path, s3_server, s3, bucket, source_file, warehouse_settings)


@pytest.mark.parametrize(
    ("warehouse_settings", "point", "nth", "chunk_bytes", "budget"),
    CRASH_SCENARIOS,
    indirect=["warehouse_settings"],
)
def test_kill_at_crash_point_loses_and_duplicates_nothing(
    kill_scenario: Callable[..., int | None], point: str, nth: int, chunk_bytes: int, budget: float
) -> None:
    code = kill_scenario(chunk_bytes, budget, f"{point}:{nth}")
    assert code == -signal.SIGKILL, "the crash point was never reached"


@pytest.mark.parametrize(
    ("compression", "point"),
    [("gzip", "commit_chunk.in_transaction:6"), ("zstd", "import.chunk_committed:4")],
)
@pytest.mark.parametrize("warehouse_settings", ["duckdb"], indirect=True)
def test_kill_in_a_compressed_file_loses_and_duplicates_nothing(
    kill_scenario: Callable[..., int | None], compression: str, point: str
) -> None:
    code = kill_scenario(1024, 600, point, compression=compression)
    assert code == -signal.SIGKILL, "the crash point was never reached"


@pytest.mark.parametrize(
    ("warehouse_settings", "seed"),
    [(backend, seed) for backend, count in RANDOM_SCENARIOS.items() for seed in range(count)],
    indirect=["warehouse_settings"],
)
def test_kill_at_a_random_instant_loses_and_duplicates_nothing(
    kill_scenario: Callable[..., int | None], seed: int
) -> None:
    delay = random.Random(seed).uniform(0.0, 2.5)  # spans run start-up, import and archive
    kill_scenario(1024, 600, kill_after=delay)


# The lake as deployed beyond one machine: chunks of 8 KB hold more rows than DuckLake
# inlines in its catalog, and 60 property names new to the lake, so every commit writes
# Parquet to S3, from the chunk's connection and from the one that adds names.
LAKE_ON_S3 = [
    ("commit_chunk.in_transaction:3", None, None),
    (None, 1, "gzip"),
]


@pytest.mark.parametrize(("crash_at", "seed", "compression"), LAKE_ON_S3)
@pytest.mark.parametrize("warehouse_settings", ["ducklake_s3"], indirect=True)
def test_kill_on_a_lake_on_s3_loses_and_duplicates_nothing(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3: Any,
    bucket: str,
    warehouse_settings: WarehouseSettings,
    crash_at: str | None,
    seed: int | None,
    compression: str | None,
) -> None:
    file = km_file(seed=7, repeats=160, property_names=60)  # about 100 KB, 13 chunks
    kill_after = None if seed is None else random.Random(seed).uniform(0.0, 2.5)
    code = run_scenario(
        tmp_path,
        s3_server,
        s3,
        bucket,
        file,
        warehouse_settings,
        8192,
        600,
        crash_at=crash_at,
        kill_after=kill_after,
        compression=compression,
    )
    if crash_at:
        assert code == -signal.SIGKILL, "the crash point was never reached"
    assert any(key.endswith(".parquet") for key in lake_keys(s3, bucket))


def lake_keys(s3: Any, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="lake/")
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_dead_run_blocks_the_schedule_until_run_monitoring_fails_it(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str, source_file: KmFile
) -> None:
    s3.put_object(Bucket=bucket, Key=KEY, Body=source_file.data)
    config = make_config(s3_server, bucket, tmp_path / "warehouse.duckdb", chunk_bytes=1024)
    home = make_dagster_home(tmp_path)
    env = {
        **os.environ,
        "KMDAGSTER_CONFIG": str(write_config(tmp_path / "kmdagster.yaml", config)),
        "DAGSTER_HOME": str(home),
        CRASH_ENV: "commit_chunk.in_transaction:3",
    }
    defs = build_definitions(config)
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])
        assert start_job(env, tmp_path / "job.stderr").wait(timeout=180) == -signal.SIGKILL
        blocked = run_tick(defs, instance, datetime(2026, 11, 26, 12, tzinfo=timezone.utc))
        assert isinstance(blocked, SkipReason)
        assert "is STARTED" in (blocked.skip_message or "")

        assert fail_dead_runs(instance) == 1
        (dead,) = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        assert dead.tags["dagster/max_runtime"] == str(DEAD_RUN_MAX_RUNTIME)
        assert finish_with_schedule(defs, instance) == 1
    warehouse = WarehouseSettings(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    assert_exactly_once(s3, bucket, warehouse, source_file, KEY, source_file.data)


def test_a_run_that_never_started_blocks_the_schedule_until_run_monitoring_fails_it(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str, source_file: KmFile
) -> None:
    """A run created but never launched (its daemon or worker died first) holds the source
    like a going one, until run monitoring's start timeout fails it."""
    s3.put_object(Bucket=bucket, Key=KEY, Body=source_file.data)
    warehouse = WarehouseSettings(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    defs = build_definitions(make_config(s3_server, bucket, warehouse, chunk_bytes=1024))
    with DagsterInstance.from_config(str(make_dagster_home(tmp_path))) as instance:
        instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])
        job = defs.resolve_job_def(ACCOUNTS.job)
        never_started = instance.create_run_for_job(
            job, tags={**job.tags, "dagster/partition": KEY}
        )
        blocked = run_tick(defs, instance, datetime(2026, 11, 26, 12, tzinfo=timezone.utc))
        assert isinstance(blocked, SkipReason)
        assert f"{never_started.run_id} of source 'accounts' is NOT_STARTED" in (
            blocked.skip_message or ""
        )

        assert fail_dead_runs(instance) == 1
        (dead,) = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        assert dead.run_id == never_started.run_id
        assert finish_with_schedule(defs, instance) == 1
    assert_exactly_once(s3, bucket, warehouse, source_file, KEY, source_file.data)


@pytest.mark.parametrize("warehouse_settings", BACKENDS, indirect=True)
def test_a_file_killed_again_and_again_after_committing_is_never_quarantined(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_settings: Any
) -> None:
    """More runs in a row than the quarantine's threshold (three by default) die with their
    node (SIGKILL, failed by run monitoring), each after committing chunks: every one
    advanced the file, so none counts toward the quarantine and the file stays first in
    line until it is done."""
    big = km_file(seed=11, repeats=100)  # about 60 KB: 60 chunks of 1 KB
    s3.put_object(Bucket=bucket, Key=KEY, Body=big.data)
    config = make_config(s3_server, bucket, warehouse_settings, chunk_bytes=1024)
    source = config.sources[0]
    kills = source.quarantine_after_failed_runs + 1
    home = make_dagster_home(tmp_path)
    env = {
        **os.environ,
        "KMDAGSTER_CONFIG": str(write_config(tmp_path / "kmdagster.yaml", config)),
        "DAGSTER_HOME": str(home),
        CRASH_ENV: "import.chunk_committed:4",  # each run dies after its fourth commit
    }
    defs = build_definitions(config)
    tick = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
    offsets = []
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])
        for kill in range(kills):
            request = evaluate_schedule(defs, instance, tick + timedelta(hours=kill))
            assert isinstance(request, RunRequest), request
            assert request.partition_key == KEY
            assert start_job(env, tmp_path / "job.stderr").wait(timeout=180) == -signal.SIGKILL
            assert fail_dead_runs(instance) == 1
            [(offset,)] = warehouse_rows(
                warehouse_settings, "SELECT next_offset FROM km_import_files"
            )
            offsets.append(offset)
        assert offsets == sorted(set(offsets)) and offsets[-1] < len(big.data)
        failed = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        assert len(failed) == kills
        progress = RunProgress.at_root_now(s3, source, warehouse_settings)
        assert quarantined_files(instance, source, progress) == {}
        assert finish_with_schedule(defs, instance) == 1
    assert_file_loaded_once(warehouse_settings, KEY, big)
    [(runs, recorded)] = warehouse_rows(
        warehouse_settings,
        "SELECT f.import_runs, count(r.run_id) FROM km_import_files AS f "
        "JOIN km_import_runs AS r ON r.file_id = f.file_id GROUP BY f.import_runs",
    )
    assert runs == recorded == kills + 1  # the killed runs and the one that finished
