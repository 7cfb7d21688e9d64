"""One measurement in its own process, so its peak RSS is its own.

    python -m benchmarks.measure {split,baseline,floor} FILE CHUNK_BYTES
    python -m benchmarks.measure import KEY        (KMDAGSTER_CONFIG points at the source)

Prints one JSON object: seconds (of the measured work only), lines, bytes, peak_rss_mb
and a digest of the rows produced, which the orchestrator compares across methods.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# isort: off
import kmdagster  # noqa: F401 - first, as in a code location: its allocator setting applies
import polars as pl

# isort: on

NOW = 1_800_000_000
DIGEST_MOD = 2**64
TABLE_COLUMNS = {
    "events": {"line_no": pl.Int64, "person": pl.String, "event": pl.String, "ts": pl.Int64},
    "properties": {
        "line_no": pl.Int64,
        "name": pl.String,
        "value": pl.String,
        "value_number": pl.Float64,
    },
    "aliases": {"line_no": pl.Int64, "person": pl.String, "alias": pl.String, "ts": pl.Int64},
    "rejects": {"line_no": pl.Int64, "reason": pl.String},
}


def local_chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Line-aligned chunks of a local file with the line number of each one's first line."""
    line_no = 1
    carry = b""
    with path.open("rb") as handle:
        while True:
            block = handle.read(chunk_bytes)
            if not block:
                break
            data = carry + block
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            chunk, carry = data[: cut + 1], data[cut + 1 :]
            yield chunk, line_no
            line_no += chunk.count(b"\n")
    if carry:
        yield carry, line_no


def digest(tables: dict[str, pl.DataFrame]) -> dict[str, int]:
    """Order-independent digests of each table's canonical columns."""
    out = {}
    for name, columns in TABLE_COLUMNS.items():
        frame = tables[name].select(list(columns)).cast(columns)  # type: ignore[arg-type]
        out[name] = sum(frame.hash_rows(seed=0).to_list()) % DIGEST_MOD
    return out


def add_digests(total: dict[str, int], more: dict[str, int]) -> None:
    for name, value in more.items():
        total[name] = (total.get(name, 0) + value) % DIGEST_MOD


def measure_split(path: Path, chunk_bytes: int) -> dict[str, object]:
    from kmdagster.km_format.split import split_km_lines

    seconds, lines, digests = 0.0, 0, {}
    for data, first in local_chunks(path, chunk_bytes):
        started = time.perf_counter()
        split = split_km_lines(data, first, NOW)
        seconds += time.perf_counter() - started
        lines += split.lines_read
        tables = {
            "events": split.events.with_columns(ts=pl.col("ts").dt.epoch("s")),
            "properties": split.properties,
            "aliases": split.aliases.with_columns(ts=pl.col("ts").dt.epoch("s")),
            "rejects": split.rejects,
        }
        add_digests(digests, digest(tables))
    return {"seconds": seconds, "lines": lines, "digest": digests}


def measure_baseline(path: Path, chunk_bytes: int) -> dict[str, object]:
    from benchmarks.baseline import baseline_split

    seconds, lines, digests = 0.0, 0, {}
    for data, first in local_chunks(path, chunk_bytes):
        started = time.perf_counter()
        events, properties, aliases, rejects, _, lines_read = baseline_split(data, first, NOW)
        seconds += time.perf_counter() - started
        lines += lines_read
        tables = {
            "events": pl.DataFrame(
                [(r[0], r[1], r[2], r[4]) for r in events],
                schema=list(TABLE_COLUMNS["events"]),
                orient="row",
            ),
            "properties": pl.DataFrame(
                [(r[0], r[3], r[5], r[6]) for r in properties],
                schema=TABLE_COLUMNS["properties"],
                orient="row",
            ),
            "aliases": pl.DataFrame(aliases, schema=list(TABLE_COLUMNS["aliases"]), orient="row"),
            "rejects": pl.DataFrame(rejects, schema=list(TABLE_COLUMNS["rejects"]), orient="row"),
        }
        add_digests(digests, digest(tables))
    return {"seconds": seconds, "lines": lines, "digest": digests}


def measure_floor(path: Path, chunk_bytes: int) -> dict[str, object]:
    from benchmarks.baseline import parse_only
    from kmdagster.km_format.lines import count_lines

    seconds, lines = 0.0, 0
    for data, _ in local_chunks(path, chunk_bytes):
        started = time.perf_counter()
        parse_only(data)
        seconds += time.perf_counter() - started
        lines += count_lines(data)
    return {"seconds": seconds, "lines": lines, "digest": None}


def measure_import(key: str) -> dict[str, object]:
    import duckdb
    from dagster import DagsterInstance

    from kmdagster.config import load_config
    from kmdagster.defs.factory import build_definitions

    config = load_config()
    defs = build_definitions(config)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{config.sources[0].name}_files", [key])
        job = defs.resolve_job_def(f"{config.sources[0].name}_import_job")
        started, cpu_started = time.perf_counter(), cpu_seconds()
        result = job.execute_in_process(instance=instance, partition_key=key)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    assert result.success
    rss = peak_rss_mb()  # before reading the tables back for the digest
    with duckdb.connect(config.warehouse.duckdb_path, read_only=True) as con:
        [(lines,)] = con.sql("SELECT lines_read FROM km_import_files").fetchall()
        tables = {
            "events": con.sql(
                "SELECT line_no, person, event, epoch(ts)::BIGINT AS ts FROM km_events"
            ).pl(),
            "properties": con.sql(
                "SELECT line_no, name, value, value_number FROM km_properties"
            ).pl(),
            "aliases": con.sql(
                "SELECT line_no, person, alias, epoch(ts)::BIGINT AS ts FROM km_aliases"
            ).pl(),
            "rejects": con.sql("SELECT line_no, reason FROM km_rejects").pl(),
        }
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "lines": lines,
        "digest": digest(tables),
        "peak_rss_mb": rss,
    }


def measure_store(key: str, layout: str) -> dict[str, object]:
    """``import_file`` alone (no Dagster) into a fresh warehouse: a DuckDB file in one
    storage layout, ``compact`` (the product's), ``wide`` (the previous release's) or
    ``no_rows`` (the ledger only: reading and splitting), or ``postgres``, the
    configuration's (empty) PostgreSQL database."""
    from benchmarks.wide_storage import NoRowsWarehouse, WideTablesWarehouse
    from kmdagster.config import load_config
    from kmdagster.defs.resources import build_s3_resource
    from kmdagster.importer import import_file
    from kmdagster.warehouse.backends import open_warehouse
    from kmdagster.warehouse.warehouse import DuckDBWarehouse

    config = load_config()
    source = config.sources[0]
    path = Path(config.warehouse.duckdb_path)
    path.unlink(missing_ok=True)
    layouts = {
        "compact": DuckDBWarehouse.connect,
        "wide": WideTablesWarehouse.connect,
        "no_rows": NoRowsWarehouse.connect,
        "postgres": lambda _: open_warehouse(config.warehouse),
    }
    with layouts[layout](path) as warehouse:
        started, cpu_started = time.perf_counter(), cpu_seconds()
        report = import_file(
            build_s3_resource(config).get_client(),
            warehouse,
            source.model_copy(update={"time_budget_seconds": 3600.0}),
            key,
            "benchmark",
        )
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    size_mb = path.stat().st_size / 1024 / 1024 if path.exists() else None
    path.unlink(missing_ok=True)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "lines": report.lines_read,
        "peak_rss_mb": peak_rss_mb(),
        "file_mb": size_mb,
    }


def cpu_seconds() -> float:
    """CPU time of this process so far, all threads, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    mode = sys.argv[1]
    if mode == "import":
        result = measure_import(sys.argv[2])
    elif mode == "store":
        result = measure_store(sys.argv[2], sys.argv[3])
    else:
        path, chunk_bytes = Path(sys.argv[2]), int(sys.argv[3])
        measure = {"split": measure_split, "baseline": measure_baseline, "floor": measure_floor}
        result = measure[mode](path, chunk_bytes)
        result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
