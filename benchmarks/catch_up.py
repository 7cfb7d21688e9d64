"""A backlog of small files: how fast a source catches up at one file per run (KISSmetrics'
rule, the default) and at ``max_files_per_run: 50``.

    python -m benchmarks.catch_up                  # 1,000 files of 40 lines
    python -m benchmarks.catch_up --files 100 --profile catch_up.prof

The files wait at the root of a SeaweedFS bucket, the warehouse is a DuckDB file and the
Dagster instance a local SQLite storage, as under ``make dev``. Each tick is what the
daemon does: the schedule's decision, then the import job run in this process. Reported
per setting: files per run, seconds per run, and files per hour at the hourly default
cron (one run an hour) and with runs back to back (the most a source could catch up).
At 50 the whole backlog is imported (20 runs for 1,000 files), then checked: every file
archived, every line loaded once.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import secrets
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dagster import DagsterInstance, RunRequest, build_schedule_context

from benchmarks.lake import BUCKET, start_bench_s3
from kmdagster.config import KmConfig, S3Settings, SourceConfig, WarehouseSettings
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.naming import SourceNames
from kmdagster.warehouse.file_rows import ROW_IDENTITY
from kmdagster.warehouse.warehouse import Warehouse
from kmdagster_dev.instance_yaml import write_instance_yaml
from kmdagster_dev.km_files import KmFile, km_file
from kmdagster_dev.postgres import USER, PostgresServer

NAMES = SourceNames("accounts")
SETTINGS = (1, 50)


def catch_up(
    work: Path,
    endpoint_url: str,
    client: object,
    files: int,
    per_run: int,
    runs: int,
    postgres: PostgresServer | None,
) -> tuple[int, float]:
    """(files imported, seconds) of ``runs`` ticks over a backlog of ``files``."""
    prefix = f"accounts{per_run}."
    body = km_file(seed=per_run, repeats=5).data  # 40 lines, 3 KB
    keys = [f"{prefix}{i:05d}.json" for i in range(files)]
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=body)  # type: ignore[attr-defined]
    source = SourceConfig(
        name="accounts",
        bucket=BUCKET,
        base_filename=f"accounts{per_run}.json",
        max_files_per_run=per_run,
    )
    config = KmConfig(
        s3=S3Settings(endpoint_url=endpoint_url, region_name="us-east-1"),
        warehouse=WarehouseSettings(duckdb_path=str(work / f"warehouse-{per_run}.duckdb")),
        sources=(source,),
    )
    defs = build_definitions(config)
    schedule = defs.resolve_schedule_def(NAMES.schedule)
    job = defs.resolve_job_def(NAMES.job)
    home = work / f"dagster-{per_run}"
    home.mkdir()
    if postgres is not None:
        write_instance_yaml(home, postgres_storage=True)
        os.environ.update(
            DAGSTER_PG_HOST="127.0.0.1",
            DAGSTER_PG_PORT=str(postgres.port),
            DAGSTER_PG_DB=postgres.create_database(f"dagster_{per_run}").rsplit("/", 1)[1],
            DAGSTER_PG_USERNAME=USER,
            DAGSTER_PG_PASSWORD=postgres.password,
        )
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(NAMES.partitions, keys)
        tick = datetime(2026, 12, 1, tzinfo=timezone.utc)
        seconds = 0.0
        for _ in range(runs):
            started = time.perf_counter()
            with build_schedule_context(
                instance=instance, scheduled_execution_time=tick, resources=defs.resources
            ) as context:
                request = schedule(context)
            assert isinstance(request, RunRequest), request
            result = job.execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags
            )
            assert result.success
            seconds += time.perf_counter() - started
            tick += timedelta(hours=1)
        done = len(instance.get_materialized_partitions(NAMES.archive))
    assert_every_line_once(config.warehouse, km_file(seed=per_run, repeats=5), done)
    return done, seconds


def assert_every_line_once(settings: WarehouseSettings, file: KmFile, files: int) -> None:
    """``files`` copies of ``file`` archived, each line loaded once: the ledger and the
    tables' row counts agree with the file's, and no line of a file appears twice."""
    with Warehouse.read_only(settings) as warehouse:
        assert warehouse is not None
        rows = warehouse.database.rows
        [ledger] = rows(
            "SELECT count(*), sum(lines_read) FROM km_import_files WHERE status = 'archived'"
        )
        assert ledger == (files, files * file.lines), ledger
        for table, expected in file.rows.items():
            [(total, distinct)] = rows(
                f"SELECT count(*), count(DISTINCT (file_id, {ROW_IDENTITY[table]})) FROM {table}"
            )
            assert total == distinct == files * expected, (table, total, distinct)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--profile", help="write a cProfile of the runs at 50 to this file")
    parser.add_argument(
        "--instance", choices=("sqlite", "postgres"), default="sqlite", help="Dagster's storage"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kmdagster-catch-up-bench-"))
    server, client = start_bench_s3(work)
    postgres = None
    if args.instance == "postgres":
        postgres = PostgresServer(work / "postgres", secrets.token_hex(12)).start()
    try:
        print(f"A backlog of {args.files} files of 40 lines (3 KB), DuckDB warehouse:")
        print(
            "| max_files_per_run | runs | files | seconds per run | files per hour, hourly cron "
            "| files per hour, runs back to back |"
        )
        print("|---|---|---|---|---|---|")
        for per_run in SETTINGS:
            runs = 10 if per_run == 1 else -(-args.files // per_run)
            profile = cProfile.Profile() if args.profile and per_run > 1 else None
            if profile:
                profile.enable()
            done, seconds = catch_up(
                work, server.endpoint_url, client, args.files, per_run, runs, postgres
            )
            if profile:
                profile.disable()
                profile.dump_stats(args.profile)
            per_run_seconds = seconds / runs
            print(
                f"| {per_run} | {runs} | {done} | {per_run_seconds:.2f} | {done / runs:.0f} | "
                f"{done / seconds * 3600:,.0f} |",
                flush=True,
            )
    finally:
        server.stop()
        if postgres is not None:
            postgres.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
