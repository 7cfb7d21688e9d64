"""The warehouses side by side: a DuckDB file, a lake (local catalog and folder) and
PostgreSQL, on two line profiles, and two sources at once on a lake.

    python -m benchmarks.lake                      # 1,000,000 lines per profile
    python -m benchmarks.lake --lines 100000       # quick

Each import runs from a local S3 (SeaweedFS) in a process of its own (its peak RSS is its
own): ``import_file`` alone into an empty warehouse, then the import job (import, data
checks, metadata, archive, as a scheduled run does) of the same lines under the second
source into the same warehouse. Profiles: ``mixed`` (the main benchmark's
lines, about 190 bytes) and ``property_heavy`` (about 340 bytes, 3-4 properties a line
with long URLs and user agents). The parallel figure: two sources' files imported at
once by two processes into one lake on a PostgreSQL catalog, against one alone.
Prints the table and HOLDS/MISSED for each goal; the import job against DuckDB's reader
also as the median of pairs run in turn (`--pairs`, 3 by default).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmdagster import IMPORT_ENVIRONMENT, seams
from kmdagster.config import KmConfig, S3Settings, SourceConfig, WarehouseSettings, config_yaml
from kmdagster.stages import StageTimes
from kmdagster.warehouse.backends import backend_of, open_warehouse
from kmdagster_dev.km_files import PROFILES, write_file
from kmdagster_dev.postgres import PostgresServer
from kmdagster_dev.seaweed import Identity, SeaweedS3

if TYPE_CHECKING:
    from dagster import JobDefinition

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
BUCKET = "km-lake-bench"
GOAL_LAKE_SPEEDUP = 1.5  # lake lines/s over the DuckDB file's, property-heavy profile
GOAL_PEAK_RSS_MB = 400.0
GOAL_PARALLEL_SPEEDUP = 1.3  # two sources at once over one, lines/s
# The import job's wall time over DuckDB's own reader's, on the same file from the same S3:
# within 2x is the step set when it was 3.9x (property-heavy) and 4.4x (mixed).
GOAL_READER_RATIO = 2.0
READER_PAIRS = 3  # the job and DuckDB's reader in turn, per profile
DOCS = ROOT / "docs" / "performance.md"
BREAKDOWN_START, BREAKDOWN_END = "<!-- breakdown: make bench -->", "<!-- /breakdown -->"
# Stages that hold another: its time is shown apart (``kmdagster.stages``).
NESTED = {"read": "decompress", "archive": "rejects file"}


def measure(config_path: str, source_name: str, key: str, how: str) -> dict[str, Any]:
    """In the child: one import, ``import_file`` alone or the source's import job (import
    then archive, in process, on an ephemeral Dagster instance), timed, with what it stored."""
    import resource

    from kmdagster.config import load_config

    config = load_config(Path(config_path))
    source = config.source(source_name)

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    if how == "duckdb_read_json":
        return duckdb_read_json(config, key, cpu_seconds)
    times = StageTimes()
    loading_started = time.perf_counter()
    # A run worker loads the code location before the run starts, as DuckDB's reader is
    # timed once duckdb is imported: the job is timed from its launch, the loading apart.
    job = load_import_job(config, source_name) if how == "job" else None
    code_loading = time.perf_counter() - loading_started
    started, cpu_started, started_at = time.perf_counter(), cpu_seconds(), time.time()
    if job is not None:
        with seams.injected(stage_times=times):
            run_import_job(job, source_name, key)
    else:
        from kmdagster.defs.resources import build_s3_resource
        from kmdagster.importer import import_file

        client = build_s3_resource(config).get_client()
        with open_warehouse(config.warehouse) as warehouse, seams.injected(stage_times=times):
            import_file(client, warehouse, source, key, "benchmark")
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    ended_at = time.time()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open_warehouse(config.warehouse) as warehouse:
        row = warehouse.latest_ledger_row(source_name, key)
        assert row is not None and row.is_complete, row
    stored = backend_of(config.warehouse).stored_bytes(config.warehouse)
    return {
        "started_at": started_at,  # the wall clock: imports in other processes line up
        "ended_at": ended_at,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "lines": row.lines_read,
        "property_rows": row.properties_rows,
        "peak_rss_mb": peak_rss_mb,
        "stored_bytes": int(stored),
        "stages": times.as_dict(),
        "polars_pool_cpu": thread_cpu_seconds("polars-"),
        "code_loading_seconds": code_loading,
    }


def thread_cpu_seconds(name_prefix: str) -> float:
    """CPU seconds of this process's live threads whose name starts with ``name_prefix``
    (polars runs its work on its own pool: that CPU is not the calling thread's)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(name_prefix):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            continue  # the thread ended
    return total / tick


def duckdb_read_json(config: KmConfig, key: str, cpu_seconds: Any) -> dict[str, Any]:
    """What a DuckDB user would write instead: one ``read_json`` of the object over httpfs
    (loaded from its PyPI package) into a table of a fresh DuckDB file, unreadable lines
    kept as NULL rows. One wide table, no KISSmetrics rules, ledger or checks."""
    import resource

    import duckdb

    from kmdagster.warehouse.ducklake_database import extension_file, s3_secret_statement

    started, cpu_started, started_at = time.perf_counter(), cpu_seconds(), time.time()
    path = Path(config.warehouse.duckdb_path)
    con = duckdb.connect(str(path), config={"autoinstall_known_extensions": False})
    con.execute(f"LOAD '{extension_file('httpfs')}'")
    con.execute(s3_secret_statement(config.s3))
    con.execute(
        f"CREATE TABLE lines AS SELECT * FROM read_json('s3://{BUCKET}/{key}', "
        "format = 'newline_delimited', ignore_errors = true)"
    )
    [(lines,)] = con.execute("SELECT count(*) FROM lines").fetchall()
    con.close()
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    return {
        "started_at": started_at,
        "ended_at": time.time(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "lines": int(lines),
        "property_rows": 0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stored_bytes": path.stat().st_size,
        "stages": {},
        "polars_pool_cpu": 0.0,
    }


def load_import_job(config: KmConfig, source_name: str) -> JobDefinition:
    """The source's import job, from the code location's definitions."""
    from kmdagster.defs.factory import build_definitions
    from kmdagster.defs.naming import SourceNames

    return build_definitions(config).resolve_job_def(SourceNames(source_name).job)


def run_import_job(job: JobDefinition, source_name: str, key: str) -> None:
    """The source's import job for ``key``, as a run worker runs it."""
    from dagster import DagsterInstance

    from kmdagster.defs.naming import SourceNames

    names = SourceNames(source_name)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(names.partitions, [key])
        assert job.execute_in_process(instance=instance, partition_key=key).success


def spawn(
    config_path: Path, source: str, key: str, how: str = "import_file"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.lake", "measure", str(config_path), source, key, how],
        cwd=ROOT,
        env={**IMPORT_ENVIRONMENT, **os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"measure failed:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def write_config(path: Path, server: SeaweedS3, warehouse: WarehouseSettings) -> Path:
    sources = tuple(  # one run imports a whole file: its time is what is measured
        SourceConfig(
            name=name, bucket=BUCKET, base_filename=f"{name}.json", time_budget_seconds=3600
        )
        for name in ("accounts", "orders")
    )
    s3 = S3Settings(endpoint_url=server.endpoint_url, region_name="us-east-1")
    path.write_text(config_yaml(KmConfig(s3=s3, warehouse=warehouse, sources=sources)))
    return path


def row(name: str, result: dict[str, Any]) -> str:
    lines, seconds, cpu = result["lines"], result["seconds"], result["cpu_seconds"]
    return (
        f"| {name} | {seconds:.1f} | {lines / seconds:,.0f} | "
        f"{result['property_rows'] / seconds:,.0f} | {cpu / lines * 1e6:.1f} | "
        f"{result['peak_rss_mb']:.0f} | {result['stored_bytes'] / MB:,.0f} |"
    )


def start_bench_s3(work: Path, bucket: str = BUCKET) -> tuple[SeaweedS3, Any]:
    """A SeaweedFS server in ``work`` with ``bucket``, its admin's credentials in this
    process's environment (the measuring children inherit them), and a client."""
    admin = Identity(
        "bench",
        "KMBENCH" + secrets.token_hex(6).upper(),
        secrets.token_hex(20),
        ("Admin", "Read", "List", "Write"),
    )
    server = SeaweedS3(work / "seaweedfs", (admin,)).start()
    os.environ.update(AWS_ACCESS_KEY_ID=admin.access_key, AWS_SECRET_ACCESS_KEY=admin.secret_key)
    client = server.client(admin)
    client.create_bucket(Bucket=bucket)
    return server, client


def verdict(holds: bool) -> str:
    return "HOLDS" if holds else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument(
        "--docs", action="store_true", help="write the breakdown into docs/performance.md"
    )
    parser.add_argument(
        "--property-heavy-only",
        action="store_true",
        help="leave out the mixed profile: the goals are judged on the property-heavy one",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=READER_PAIRS,
        help="runs of the import job and DuckDB's reader in turn, per profile",
    )
    args = parser.parse_args()
    profiles = ["property_heavy"] if args.property_heavy_only else list(PROFILES)
    work = Path(tempfile.mkdtemp(prefix="kmdagster-lake-bench-"))
    server, client = start_bench_s3(work)
    postgres = PostgresServer(work / "postgres", secrets.token_hex(16)).start()
    os.environ.update(PGPASSWORD=postgres.password)
    try:
        results: dict[tuple[str, str], dict[str, Any]] = {}  # import_file alone
        jobs: dict[tuple[str, str], dict[str, Any]] = {}  # the import job
        readers: dict[str, dict[str, Any]] = {}  # DuckDB's read_json, per profile
        reader_ratios: dict[str, list[float]] = {}  # job / read_json, pair by pair
        for profile in profiles:
            path = work / f"{profile}.json"
            size = write_file(path, args.lines, profile=profile)
            for source in ("accounts", "orders"):  # the same lines under both sources
                client.upload_file(str(path), BUCKET, f"{source}.{profile}.json")
            print(f"{profile}: {args.lines:,} lines, {size / MB:,.0f} MB", flush=True)
            backends = {
                "DuckDB file": WarehouseSettings(duckdb_path=str(work / f"{profile}.duckdb")),
                "DuckLake (local catalog, folder)": WarehouseSettings(
                    backend="ducklake",
                    ducklake_catalog=str(work / f"lake-{profile}" / "catalog.ducklake"),
                    ducklake_data_path=str(work / f"lake-{profile}" / "data"),
                ),
                "PostgreSQL": WarehouseSettings(
                    backend="postgres",
                    postgres_url=postgres.create_database(f"km_{profile}"),
                ),
            }
            for name, warehouse in backends.items():
                config = write_config(work / f"{profile}-{len(results)}.yaml", server, warehouse)
                results[(profile, name)] = result_of(
                    spawn(config, "accounts", f"accounts.{profile}.json")
                )
                print(row(f"{profile}: {name}", results[(profile, name)]), flush=True)
                # The job (import, checks, metadata, archive) on the other source's copy,
                # into the same warehouse: what a scheduled run does. Its archive moves the
                # copy, so it is put back first.
                client.upload_file(str(path), BUCKET, f"orders.{profile}.json")
                jobs[(profile, name)] = result_of(
                    spawn(config, "orders", f"orders.{profile}.json", "job")
                )
                print(row(f"{profile}: {name}, import job", jobs[(profile, name)]), flush=True)
            plain = WarehouseSettings(duckdb_path=str(work / f"{profile}-read_json.duckdb"))
            config = write_config(work / f"{profile}-read_json.yaml", server, plain)
            readers[profile] = result_of(
                spawn(config, "accounts", f"accounts.{profile}.json", "duckdb_read_json")
            )
            print(row(f"{profile}: DuckDB read_json", readers[profile]), flush=True)
            reader_ratios[profile] = job_over_reader(
                work, server, client, path, profile, args.pairs
            )

        # Two sources at once into one lake on a PostgreSQL catalog, against one alone.
        profile = "property_heavy"
        alone_lake = WarehouseSettings(
            backend="ducklake",
            ducklake_catalog=postgres.create_database("km_lake_alone"),
            ducklake_data_path=str(work / "lake-alone"),
        )
        alone = result_of(
            spawn(
                write_config(work / "alone.yaml", server, alone_lake),
                "accounts",
                f"accounts.{profile}.json",
            )
        )
        shared_lake = WarehouseSettings(
            backend="ducklake",
            ducklake_catalog=postgres.create_database("km_lake_shared"),
            ducklake_data_path=str(work / "lake-shared"),
        )
        client.upload_file(str(work / f"{profile}.json"), BUCKET, f"orders.{profile}.json")
        shared = write_config(work / "shared.yaml", server, shared_lake)
        both = [
            spawn(shared, source, f"{source}.{profile}.json") for source in ("accounts", "orders")
        ]
        together = [result_of(process) for process in both]
        # From the first import's start to the last one's end, as the children timed them
        # (Python's start-up is left out, as it is from the one alone).
        wall = max(r["ended_at"] for r in together) - min(r["started_at"] for r in together)
    finally:
        postgres.stop()
        server.stop()

    header = (
        "| warehouse | seconds | lines/s | property rows/s | CPU s per million lines "
        "| peak RSS MB | stored MB |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    print(f"\n{header}")
    for (profile, name), result in results.items():
        print(row(f"{profile}: {name}", result))
        print(row(f"{profile}: {name}, import job", jobs[(profile, name)]))
    print(row("property_heavy: DuckLake (PostgreSQL catalog), one source", alone))
    for profile, result in readers.items():
        print(row(f"{profile}: DuckDB `read_json` over httpfs (one wide table)", result))
    alone_rate = alone["lines"] / alone["seconds"]
    together_rate = sum(result["lines"] for result in together) / wall
    print(
        f"\nTwo sources at once on the lake (PostgreSQL catalog): {together_rate:,.0f} lines/s "
        f"together in {wall:.1f} s, one alone {alone_rate:,.0f} lines/s "
        f"({together_rate / alone_rate:.2f}x)"
    )

    def rate(profile: str, name: str) -> float:
        result = results[(profile, name)]
        return result["lines"] / result["seconds"]

    def job_rate(profile: str, name: str) -> float:
        result = jobs[(profile, name)]
        return result["lines"] / result["seconds"]

    lake, duckdb_file = "DuckLake (local catalog, folder)", "DuckDB file"
    speedup = rate("property_heavy", lake) / rate("property_heavy", duckdb_file)
    job_speedup = job_rate("property_heavy", lake) / job_rate("property_heavy", duckdb_file)
    peak = max(result["peak_rss_mb"] for result in [*results.values(), alone, *together])
    job_peak = max(result["peak_rss_mb"] for result in jobs.values())
    print("\nGoals:")
    print(
        f"- DuckLake import at least {GOAL_LAKE_SPEEDUP}x the DuckDB file's (property-heavy): "
        f"import_file {speedup:.2f}x {verdict(speedup >= GOAL_LAKE_SPEEDUP)}, import job "
        f"{job_speedup:.2f}x {verdict(job_speedup >= GOAL_LAKE_SPEEDUP)}"
    )
    print(
        f"- peak RSS under {GOAL_PEAK_RSS_MB:.0f} MB on every backend: import_file "
        f"{peak:.0f} MB {verdict(peak < GOAL_PEAK_RSS_MB)}, import job (Dagster loaded too) "
        f"{job_peak:.0f} MB {verdict(job_peak < GOAL_PEAK_RSS_MB)}"
    )
    for profile, ratios in reader_ratios.items():
        ratio = statistics.median(ratios)
        print(
            f"- {profile}, DuckDB file: import job within {GOAL_READER_RATIO:g}x of DuckDB's "
            f"read_json, median of {len(ratios)} pairs run in turn: {ratio:.2f}x "
            f"{verdict(ratio <= GOAL_READER_RATIO)} (pairs: "
            f"{', '.join(f'{each:.2f}x' for each in ratios)})"
        )
    for profile, reader in readers.items():
        for name in (duckdb_file, lake):
            job, alone_file = jobs[(profile, name)], results[(profile, name)]
            ratio = job["seconds"] / reader["seconds"]
            print(
                f"- {profile}, {name}: import job within {GOAL_READER_RATIO:g}x of DuckDB's "
                f"read_json: {ratio:.2f}x {verdict(ratio <= GOAL_READER_RATIO)} "
                f"(import_file {alone_file['seconds'] / reader['seconds']:.2f}x; DuckDB "
                f"{reader['seconds']:.1f} s, {reader['peak_rss_mb']:.0f} MB; at its speed: "
                f"{verdict(ratio <= 1.0)})"
            )
    parallel = together_rate / alone_rate
    # One import keeps this many cores busy; two can go no faster than the cores allow.
    cores_used = alone["cpu_seconds"] / alone["seconds"]
    ceiling = min(2.0, (os.cpu_count() or 1) / cores_used)
    print(
        f"- two sources in parallel at least {GOAL_PARALLEL_SPEEDUP}x one source's lines/s: "
        f"{parallel:.2f}x {verdict(parallel >= GOAL_PARALLEL_SPEEDUP)} (one import keeps "
        f"{cores_used:.2f} of this machine's {os.cpu_count()} cores busy: two can reach "
        f"{ceiling:.2f}x here at most)"
    )
    breakdown = breakdown_table(jobs[("property_heavy", duckdb_file)])
    print(f"\nWhere the import job's time goes (property-heavy, DuckDB file):\n\n{breakdown}")
    if args.docs:
        write_breakdown(breakdown)
    return 0


def job_over_reader(
    work: Path, server: SeaweedS3, client: Any, path: Path, profile: str, pairs: int
) -> list[float]:
    """The import job's time over DuckDB's reader's on the same file, ``pairs`` times,
    the two run in turn, each into a fresh DuckDB file: on a shared machine a pair sees
    the same load, where two single runs minutes apart need not."""
    ratios = []
    for pair in range(pairs):
        seconds = {}
        for how in ("job", "duckdb_read_json"):
            name = f"{profile}-pair{pair}-{how}"
            key = f"orders.{name}.json"
            client.upload_file(str(path), BUCKET, key)
            warehouse = WarehouseSettings(duckdb_path=str(work / f"{name}.duckdb"))
            config = write_config(work / f"{name}.yaml", server, warehouse)
            seconds[how] = result_of(spawn(config, "orders", key, how))["seconds"]
        ratios.append(seconds["job"] / seconds["duckdb_read_json"])
        print(f"{profile}: pair {pair + 1}, import job / read_json {ratios[-1]:.2f}x", flush=True)
    return ratios


def breakdown_table(job: dict[str, Any]) -> str:
    """Seconds per million lines of each stage of one import job: CPU and wall, summed
    over the threads that ran it (the split runs on two at once, beside the reads and
    the inserts, so the walls add up to more than the job's)."""
    stages = {name: dict(times) for name, times in job["stages"].items()}
    for outer, inner in NESTED.items():
        if outer in stages and inner in stages:
            for kind in ("wall", "cpu"):
                stages[outer][kind] -= stages[inner][kind]
    steps = {name: stages.pop(name, {"wall": 0.0, "cpu": 0.0}) for name in STEPS}
    per_million = 1e6 / job["lines"]
    pool = job["polars_pool_cpu"]
    leaf_cpu = sum(times["cpu"] for times in stages.values())
    rest = {
        "wall": job["seconds"] - steps["import step"]["wall"] - steps["archive step"]["wall"],
        "cpu": job["cpu_seconds"] - leaf_cpu - pool,
    }
    rows = [
        "| stage | CPU s | wall s |",
        "| --- | --- | --- |",
        *(
            f"| {STAGE_NAMES.get(name, name)} | {times['cpu'] * per_million:.2f} | "
            f"{times['wall'] * per_million:.2f} |"
            for name, times in sorted(stages.items(), key=lambda item: -item[1]["cpu"])
        ),
        f"| the split and laying out rows, on polars' own thread pool | "
        f"{pool * per_million:.2f} | (in the split's) |",
        f"| the run's start, Dagster's events and the rest (wall: outside the two steps) | "
        f"{rest['cpu'] * per_million:.2f} | {rest['wall'] * per_million:.2f} |",
        f"| **the job, in its process** | **{job['cpu_seconds'] * per_million:.2f}** | "
        f"**{job['seconds'] * per_million:.2f}** |",
        f"| loading the code location before the run (not in the job's time) | | "
        f"{job['code_loading_seconds']:.2f} (per run, not per line) |",
    ]
    return "\n".join(rows)


STEPS = ("import step", "archive step")
STAGE_NAMES = {
    "read": "reading (streamed ranged GETs)",
    "decompress": "decompression",
    "count lines": "counting a piece's lines",
    "split": "the split (validate and split, polars)",
    "lay out rows": "laying out rows",
    "alias groups": "alias groups",
    "commit and ledger": "the commit and the ledger",
    "checkpoint": "the checkpoint before the checks",
    "checks and metadata": "data checks and metadata",
    "archive": "the archive copy",
    "rejects file": "the rejects file",
}


def write_breakdown(table: str) -> None:
    text = DOCS.read_text()
    start, end = text.index(BREAKDOWN_START), text.index(BREAKDOWN_END)
    DOCS.write_text(f"{text[: start + len(BREAKDOWN_START)]}\n{table}\n{text[end:]}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        print(json.dumps(measure(*sys.argv[2:6])))
        sys.exit(0)
    sys.exit(main())
