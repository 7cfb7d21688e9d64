"""A KISSmetrics history: thousands of small hourly files already in the bucket, imported
through the scheduled catch-up and through Dagster's own backfill, against dlt's
filesystem source and DuckDB's own reader over the same files.

    python -m benchmarks.history                         # 2,000 files of 500 lines
    python -m benchmarks.history --files 200 --ways catch_up --profile history.prof
    python -m benchmarks.history --instance postgres --files 200 --ways catch_up,backfill

The files wait at the root of a SeaweedFS bucket; every way loads them into a fresh
DuckDB file in a process of its own. kmdagster's ways start from a fresh Dagster
instance (local SQLite storage, or PostgreSQL with ``--instance postgres``): a sensor tick
registers the keys, then

- ``catch_up``: the schedule's ticks back to back, each run of the import job taking as
  many files as ``max_files_per_run`` and the time budget allow (the documented setting
  for a backlog);
- ``backfill``: the runs Dagster's backfill launches for every partition of the source,
  as many partitions a run as the import asset's backfill policy gives, in key order.

Each run is the import job in the measuring process (``execute_in_process``), as a run
worker executes it. Reported per way: wall and CPU seconds, runs, and for kmdagster the
Dagster events and event-log bytes per file, then the check that every file is archived
and every line loaded once.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from benchmarks.lake import BUCKET, start_bench_s3
from benchmarks.run import DLT_PYTHON, run_dlt_loader
from kmdagster import IMPORT_ENVIRONMENT
from kmdagster.warehouse.backends import read_warehouse
from kmdagster_dev.km_files import generate_lines
from kmdagster_dev.postgres import USER, PostgresServer

ROOT = Path(__file__).resolve().parent.parent
KM_WAYS = ("catch_up", "backfill")
WAYS = (*KM_WAYS, "dlt", "duckdb_read_json")
MAX_FILES_PER_RUN = 1000  # the catch-up setting a user writes for a history


def file_key(index: int) -> str:
    return f"accounts.{1764460800 + 3600 * index}.json"


def upload_history(client: Any, files: int, lines: int) -> tuple[int, int]:
    """``files`` hourly files of ``lines`` mixed lines each at the bucket root; (lines,
    bytes) in all."""

    def put(index: int) -> int:
        body = generate_lines(lines, seed=index)
        client.put_object(Bucket=BUCKET, Key=file_key(index), Body=body)
        return len(body)

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(put, range(files)))
    return files * lines, sum(sizes)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def measure_kmdagster(args: argparse.Namespace) -> dict[str, Any]:
    """One way of kmdagster's, in this process: register, import, archive."""
    from dagster import DagsterInstance, RunRequest, build_schedule_context, build_sensor_context

    from kmdagster.config import KmConfig, S3Settings, SourceConfig, WarehouseSettings
    from kmdagster.defs.factory import build_definitions
    from kmdagster.defs.naming import SourceNames
    from kmdagster_dev.instance_yaml import write_instance_yaml

    work = Path(args.work)
    source = SourceConfig(
        name="accounts",
        bucket=BUCKET,
        base_filename="accounts.json",
        max_files_per_run=MAX_FILES_PER_RUN,
    )
    config = KmConfig(
        s3=S3Settings(endpoint_url=args.endpoint, region_name="us-east-1"),
        warehouse=WarehouseSettings(duckdb_path=str(work / f"{args.way}.duckdb")),
        sources=(source,),
    )
    names = SourceNames.of(source)
    home = work / f"dagster-{args.way}"
    home.mkdir()
    write_instance_yaml(home, postgres_storage=args.postgres_url is not None)
    profile = cProfile.Profile() if args.profile else None
    started, cpu_started = time.perf_counter(), cpu_seconds()
    defs = build_definitions(config)
    job = defs.resolve_job_def(names.job)
    runs = 0
    with DagsterInstance.from_config(str(home)) as instance:
        sensor = defs.resolve_sensor_def(names.sensor)
        with build_sensor_context(instance=instance, resources=defs.resources) as context:
            result = sensor(context)
        for request in result.dynamic_partitions_requests or []:  # type: ignore[union-attr]
            instance.add_dynamic_partitions(names.partitions, list(request.partition_keys or []))
        registered = time.perf_counter() - started
        stored_before = instance_bytes(home)
        if profile:
            profile.enable()
        if args.way == "catch_up":
            schedule = defs.resolve_schedule_def(names.schedule)
            tick = datetime(2026, 12, 1, tzinfo=timezone.utc)
            while True:
                with build_schedule_context(
                    instance=instance, scheduled_execution_time=tick, resources=defs.resources
                ) as context:
                    request = schedule(context)
                if not isinstance(request, RunRequest):
                    break
                done = job.execute_in_process(
                    instance=instance, partition_key=request.partition_key, tags=request.tags
                )
                assert done.success
                runs += 1
                tick += timedelta(hours=1)
        else:
            runs = run_backfill(instance, defs, names)
        if profile:
            profile.disable()
            profile.dump_stats(args.profile)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_started
        archived = len(instance.get_materialized_partitions(names.archive))
        events, event_bytes = event_log_size(instance)
    stored = instance_bytes(home) - stored_before
    check_every_line_once(config.warehouse, args.files, args.lines)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "register_seconds": registered,
        "runs": runs,
        "files": archived,
        "events": events,
        "event_bytes": event_bytes,
        "stored_bytes": stored,
    }


def run_backfill(instance: Any, defs: Any, names: Any) -> int:
    """The runs Dagster's asset backfill daemon launches for every partition of the import
    asset: one run per range of ``max_partitions_per_run`` keys (in the partitions'
    order), each tagged with its range and the backfill, executed in turn."""
    from dagster import AssetKey
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
        BACKFILL_ID_TAG,
    )

    job = defs.resolve_job_def(names.job)
    tables = defs.resolve_assets_def(AssetKey([*names.file.path[:-1], "km_events"]))
    policy = tables.backfill_policy
    per_run = policy.max_partitions_per_run if policy is not None else 1
    keys = instance.get_dynamic_partitions(names.partitions)
    backfill_id = secrets.token_hex(4)
    runs = 0
    for first in range(0, len(keys), per_run or len(keys)):
        chunk = keys[first : first + (per_run or len(keys))]
        done = job.execute_in_process(
            instance=instance,
            tags={
                ASSET_PARTITION_RANGE_START_TAG: chunk[0],
                ASSET_PARTITION_RANGE_END_TAG: chunk[-1],
                BACKFILL_ID_TAG: backfill_id,
            },
        )
        assert done.success
        runs += 1
    return runs


def instance_bytes(home: Path) -> int:
    """What the Dagster instance stores: its database's size on PostgreSQL, else the
    SQLite files under DAGSTER_HOME (the runs, one event log per run, the asset index)."""
    if os.environ.get("DAGSTER_PG_DB"):
        import psycopg

        with psycopg.connect(
            host=os.environ["DAGSTER_PG_HOST"],
            port=os.environ["DAGSTER_PG_PORT"],
            dbname=os.environ["DAGSTER_PG_DB"],
            user=os.environ["DAGSTER_PG_USERNAME"],
            password=os.environ["DAGSTER_PG_PASSWORD"],
        ) as con:
            [(size,)] = con.execute("SELECT pg_database_size(current_database())").fetchall()
            return int(size)
    return sum(path.stat().st_size for path in home.rglob("*") if path.is_file())


def event_log_size(instance: Any) -> tuple[int, int]:
    """Events stored by the runs, and their serialized bytes, as the event log keeps them."""
    from dagster._serdes import serialize_value

    events = size = 0
    for record in instance.get_run_records():
        for entry in instance.all_logs(record.dagster_run.run_id):
            events += 1
            size += len(serialize_value(entry))
    return events, size


def check_every_line_once(settings: Any, files: int, lines: int) -> None:
    """Every file archived once and every line of it accounted for once in the ledger."""

    with read_warehouse(settings) as warehouse:
        assert warehouse is not None
        [ledger] = warehouse.database.rows(
            "SELECT count(*), sum(lines_read) FROM km_import_files WHERE status = 'archived'"
        )
        assert ledger == (files, files * lines), ledger
        [(total, distinct)] = warehouse.database.rows(
            "SELECT count(*), count(DISTINCT (file_id, line_no)) FROM km_events"
        )
        assert total == distinct, (total, distinct)


def measure_duckdb_read_json(args: argparse.Namespace) -> dict[str, Any]:
    """DuckDB's own reader over the glob, through httpfs: one wide table."""
    import duckdb

    from kmdagster.config import S3Settings
    from kmdagster.warehouse.ducklake_database import extension_file, s3_secret_statement

    started, cpu_started = time.perf_counter(), cpu_seconds()
    path = str(Path(args.work) / "read_json.duckdb")
    with duckdb.connect(path, config={"autoinstall_known_extensions": False}) as con:
        con.execute(f"LOAD '{extension_file('httpfs')}'")
        con.execute(s3_secret_statement(S3Settings(endpoint_url=args.endpoint)))
        con.execute(
            f"CREATE TABLE km AS SELECT * FROM read_json('s3://{BUCKET}/accounts.*.json', "
            "format = 'newline_delimited', ignore_errors = true)"
        )
        [(rows,)] = con.execute("SELECT count(*) FROM km").fetchall()
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu_started,
        "rows": rows,
    }


def measure_dlt(args: argparse.Namespace) -> dict[str, Any] | None:
    if not DLT_PYTHON.exists():
        return None
    started, cpu_started = time.perf_counter(), cpu_seconds()
    target = Path(args.work) / "dlt.duckdb"
    found = run_dlt_loader(args.endpoint, BUCKET, "accounts.*.json", target, "lenient")
    return {
        **found,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu_started,
    }


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.way in KM_WAYS:
        return measure_kmdagster(args)
    if args.way == "dlt":
        return measure_dlt(args)
    return measure_duckdb_read_json(args)


def spawn(
    way: str,
    args: argparse.Namespace,
    work: Path,
    endpoint: str,
    postgres: PostgresServer | None,
) -> dict[str, Any] | None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.history",
        "measure",
        way,
        "--work",
        str(work),
        "--endpoint",
        endpoint,
        "--files",
        str(args.files),
        "--lines",
        str(args.lines),
    ]
    if args.profile and way in KM_WAYS:
        command += ["--profile", f"{args.profile}.{way}"]
    env = {**IMPORT_ENVIRONMENT, **os.environ}
    if postgres is not None and way in KM_WAYS:
        command += ["--postgres-url", "yes"]
        env.update(
            DAGSTER_PG_HOST="127.0.0.1",
            DAGSTER_PG_PORT=str(postgres.port),
            DAGSTER_PG_DB=postgres.create_database(f"dagster_{way}").rsplit("/", 1)[1],
            DAGSTER_PG_USERNAME=USER,
            DAGSTER_PG_PASSWORD=postgres.password,
        )
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{way} failed:\n{done.stderr[-6000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="run", choices=("run", "measure"))
    parser.add_argument("way", nargs="?", choices=WAYS)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--instance", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--profile", help="cProfile of kmdagster's runs, to FILE.<way>")
    parser.add_argument("--work")
    parser.add_argument("--endpoint")
    parser.add_argument("--postgres-url")
    args = parser.parse_args()
    if args.command == "measure":
        print(json.dumps(measure(args)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="kmdagster-history-bench-"))
    results: dict[str, Any] = {}
    lines = size = 0
    for way in args.ways.split(","):
        # Each way starts from the same bucket: kmdagster's archive empties the root.
        run_work = work / way
        run_work.mkdir()
        server, client = start_bench_s3(run_work)
        postgres = None
        try:
            lines, size = upload_history(client, args.files, args.lines)
            if args.instance == "postgres" and way in KM_WAYS:
                postgres = PostgresServer(run_work / "postgres", secrets.token_hex(12)).start()
            results[way] = spawn(way, args, run_work, server.endpoint_url, postgres)
            print(f"{way}: {json.dumps(results[way])}", flush=True)
        finally:
            server.stop()
            if postgres is not None:
                postgres.stop()
    print(
        f"\n{args.files:,} files of {args.lines} lines ({lines:,} lines, {size / 1e6:,.0f} MB), "
        f"a DuckDB warehouse; kmdagster's Dagster instance on {args.instance}:"
    )
    print(report(results, args.files))
    return 0


def report(results: dict[str, Any], files: int) -> str:
    rows = [
        "| way | wall s | CPU s | runs | ms a file | events a file | events' KB a file "
        "| instance growth, KB a file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for way, found in results.items():
        if found is None:
            rows.append(f"| {way} | skipped: no .venv-dlt (`make bench` makes it) ||||||")
            continue
        if found.get("error"):  # what stopped it is the finding: no time to compare
            rows.append(f"| {way} | stopped: {found['error']} ||||||")
            continue
        per_file = found["seconds"] / files * 1000
        events = found.get("events")
        rows.append(
            f"| {way} | {found['seconds']:.1f} | {found['cpu_seconds']:.1f} | "
            f"{found.get('runs', '')} | {per_file:.0f} | "
            f"{events / files:.1f} | {found['event_bytes'] / files / 1024:.1f} | "
            f"{found['stored_bytes'] / files / 1024:.0f} |"
            if events is not None
            else f"| {way} | {found['seconds']:.1f} | {found['cpu_seconds']:.1f} | | "
            f"{per_file:.0f} | | | |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
