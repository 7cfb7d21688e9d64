"""A source years old: the sensor and a schedule tick with many registered partitions,
before and after the sensor removes those of files archived long ago.

    python -m benchmarks.partitions                      # 100,000 registered partitions
    python -m benchmarks.partitions --partitions 20000   # quick

The ledger (a DuckDB file) holds every registered key as archived 60 days ago, and ten
files wait at the bucket root (SeaweedFS). A Dagster instance on a local SQLite storage
holds the partitions. Timed: the sensor's evaluation (listing, registering, the health
checks, and choosing the partitions to remove), Dagster's removal of them, then the
sensor and a schedule tick again with only the ten partitions left.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dagster import (
    DagsterInstance,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorResult,
    build_schedule_context,
    build_sensor_context,
)

from benchmarks.lake import BUCKET, start_bench_s3
from kmdagster.config import KmConfig, S3Settings, SourceConfig, WarehouseSettings
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.naming import SourceNames
from kmdagster.warehouse.warehouse import DuckDBWarehouse

NAMES = SourceNames("accounts")
WAITING = 10
LINE = b'{"_p":"a","_t":1700000000,"_n":"x"}\n'


def timed(what: str, call: Any) -> Any:
    started = time.perf_counter()
    result = call()
    print(f"| {what} | {time.perf_counter() - started:.2f} |", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partitions", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kmdagster-partitions-bench-"))
    server, client = start_bench_s3(work)
    try:
        warehouse = work / "warehouse.duckdb"
        with DuckDBWarehouse.connect(warehouse) as ledger:
            ledger.database.execute(
                "INSERT INTO km_import_files (source, file_key, file_etag, size_bytes, status, "
                "next_offset, lines_read, lines_loaded, lines_rejected, lines_blank, "
                "updated_at, file_id) SELECT 'accounts', 'accounts.' || lpad(i::VARCHAR, 9, "
                "'0') || '.json', '\"e\"', 10, 'archived', 10, 1, 1, 0, 0, "
                f"now() - INTERVAL 60 DAY, i + 1 FROM range({args.partitions}) AS t(i)"
            )
        waiting = [f"accounts.z{i:03d}.json" for i in range(WAITING)]
        for key in waiting:
            client.put_object(Bucket=BUCKET, Key=key, Body=LINE)
        config = KmConfig(
            s3=S3Settings(endpoint_url=server.endpoint_url, region_name="us-east-1"),
            warehouse=WarehouseSettings(duckdb_path=str(warehouse)),
            sources=(SourceConfig(name="accounts", bucket=BUCKET, base_filename="accounts.json"),),
        )
        defs = build_definitions(config)
        sensor = defs.resolve_sensor_def(NAMES.sensor)
        schedule = defs.resolve_schedule_def(NAMES.schedule)
        (work / "dagster").mkdir()
        with DagsterInstance.local_temp(str(work / "dagster")) as instance:
            archived = [f"accounts.{i:09d}.json" for i in range(args.partitions)]
            print(f"{args.partitions:,} partitions of archived files, {WAITING} files waiting")
            print("\n| step | seconds |\n| --- | --- |")
            timed(
                f"register {args.partitions:,} partitions",
                lambda: instance.add_dynamic_partitions(NAMES.partitions, [*archived, *waiting]),
            )

            def evaluate_sensor() -> Any:
                with build_sensor_context(instance=instance, resources=defs.resources) as context:
                    return sensor(context)

            def tick() -> Any:
                with build_schedule_context(
                    instance=instance,
                    scheduled_execution_time=datetime.now(timezone.utc),
                    resources=defs.resources,
                ) as context:
                    return schedule(context)

            registered = args.partitions + WAITING
            timed(f"sensor, {registered:,} registered", evaluate_sensor)
            outcome = timed(f"schedule tick, {registered:,} registered", tick)
            assert isinstance(outcome, RunRequest) and outcome.partition_key == waiting[0]

            def prune_all() -> int:
                """Sensor ticks, their removals applied as the daemon does, until none."""
                cursor, ticks = None, 0
                while True:
                    with build_sensor_context(
                        instance=instance, resources=defs.resources, cursor=cursor
                    ) as context:
                        result = sensor(context)
                    ticks += 1
                    assert isinstance(result, SensorResult)
                    removals = [
                        request
                        for request in result.dynamic_partitions_requests or []
                        if isinstance(request, DeleteDynamicPartitionsRequest)
                    ]
                    if not removals:
                        return ticks
                    for key in removals[0].partition_keys:
                        instance.delete_dynamic_partition(NAMES.partitions, key)
                    cursor = result.cursor

            ticks = timed(f"remove {args.partitions:,} partitions (sensor ticks)", prune_all)
            print(f"| (in {ticks} sensor ticks) | |")
            left = len(instance.get_dynamic_partitions(NAMES.partitions))
            timed(f"sensor, {left:,} registered", evaluate_sensor)
            outcome = timed(f"schedule tick, {left:,} registered", tick)
            assert isinstance(outcome, RunRequest) and outcome.partition_key == waiting[0]
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
