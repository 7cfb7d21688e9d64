"""The benchmark: one run, one file, every method; prints the table and target verdicts.

    python -m benchmarks.run                 # 2,000,000 lines, plus 0.5/1/2 GB memory runs
    python -m benchmarks.run --lines 20000 --memory-gb "" --scale-keys 2000   # quick

Each measurement runs in its own process (peak RSS is its own); the one-core methods take
turns for three rounds and the fastest of each counts. The project's split runs
with POLARS_MAX_THREADS=1 (one core); the import uses the machine (both cores).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kmdagster import IMPORT_ENVIRONMENT
from kmdagster.config import DEFAULT_CHUNK_BYTES
from kmdagster.defs.naming import SourceNames
from kmdagster.s3.piece_reader import PIECE_BYTES
from kmdagster_dev.km_files import write_file, write_invalid_file
from kmdagster_dev.seaweed import Identity, SeaweedS3

ROOT = Path(__file__).resolve().parent.parent

BUCKET = "km-bench"
MB = 1024 * 1024
AVERAGE_LINE_BYTES = 200  # of the generator's output, to size the memory runs


def child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.measure", *args],
        cwd=ROOT,
        env={**IMPORT_ENVIRONMENT, **os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measure {args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def generated(workdir: Path, lines: int) -> Path:
    path = workdir / f"accounts.{lines}.json"
    if not path.exists():
        started = time.perf_counter()
        size = write_file(path, lines)
        took = time.perf_counter() - started
        print(f"generated {path.name}: {lines:,} lines, {size / MB:,.0f} MB in {took:.0f}s")
    return path


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_config(server: SeaweedS3, workdir: Path, key: str, chunk: int) -> tuple[Path, Path]:
    """(configuration file, its warehouse path) for importing ``key`` from the bench bucket."""
    warehouse = workdir / f"warehouse-{key}.duckdb"
    warehouse.unlink(missing_ok=True)
    config = workdir / f"kmdagster-{key}.yaml"
    config.write_text(
        f"s3:\n  endpoint_url: {server.endpoint_url}\n  region_name: us-east-1\n"
        f"warehouse:\n  duckdb_path: {warehouse}\n"
        f"sources:\n  - name: accounts\n    bucket: {BUCKET}\n    base_filename: accounts.json\n"
        f"    chunk_bytes: {chunk}\n    time_budget_seconds: 3600\n"
    )
    return config, warehouse


def import_run(server: SeaweedS3, client: Any, workdir: Path, path: Path, chunk: int) -> dict:
    key = path.name
    client.upload_file(str(path), BUCKET, key)
    config, warehouse = bench_config(server, workdir, key, chunk)
    assert server.process is not None
    server_cpu = process_cpu_seconds(server.process.pid)
    result = child(["import", key], {"KMDAGSTER_CONFIG": str(config)})
    result["server_cpu_seconds"] = process_cpu_seconds(server.process.pid) - server_cpu
    warehouse.unlink(missing_ok=True)
    return result


def storage_runs(
    server: SeaweedS3, client: Any, workdir: Path, path: Path, chunk: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """The import alone into the previous wide layout, the compact one and no rows at all
    (reading and splitting only), taking turns; the fastest round of each, with the S3
    server's CPU. The file is uploaded again: the import job archived it."""
    key = path.name
    client.upload_file(str(path), BUCKET, key)
    config, _ = bench_config(server, workdir, key, chunk)
    assert server.process is not None
    runs: dict[str, list[dict[str, Any]]] = {"wide": [], "compact": [], "no_rows": []}
    for _ in range(rounds):
        for layout, measured in runs.items():
            server_cpu = process_cpu_seconds(server.process.pid)
            result = child(["store", key, layout], {"KMDAGSTER_CONFIG": str(config)})
            result["server_cpu_seconds"] = process_cpu_seconds(server.process.pid) - server_cpu
            measured.append(result)
    return {layout: min(measured, key=lambda r: r["seconds"]) for layout, measured in runs.items()}


DLT_PYTHON = ROOT / ".venv-dlt" / "bin" / "python"
# dlt's documented S3 reader reads an fsspec block per line: a small sample keeps it short.
DLT_DOCS_WAY_LINES = 5_000


def dlt_runs(
    server: SeaweedS3, client: Any, workdir: Path, path: Path, sample_lines: int
) -> list[dict[str, Any]] | None:
    """dlt's filesystem JSONL reader into DuckDB on the file's first lines: as dlt's docs
    show it (``readers``) on the lines as they are and on their JSON lines, and with
    ``extract_content`` on ``sample_lines`` JSON lines; kmdagster's import alone on those.
    None when .venv-dlt is missing (`make bench` makes it)."""
    import orjson

    if not DLT_PYTHON.exists():
        return None
    with path.open("rb") as source:
        lines = [line for _, line in zip(range(sample_lines), source, strict=False)]

    def is_json(line: bytes) -> bool:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        return True

    json_lines = [line for line in lines if is_json(line)]
    small = DLT_DOCS_WAY_LINES
    runs = [
        ("dlt as documented, lines as they are", lines[:small], "readers"),
        ("dlt as documented, JSON lines only", json_lines[:small], "readers"),
        ("dlt, extract_content=True, JSON lines only", json_lines, "extract_content"),
    ]
    found = []
    key = ""
    for name, kept, mode in runs:
        key = f"accounts.dlt-{mode}-{len(kept)}.json"
        (workdir / key).write_bytes(b"".join(kept))
        client.upload_file(str(workdir / key), BUCKET, key)
        target = workdir / f"dlt-{len(kept)}.duckdb"
        target.unlink(missing_ok=True)
        result = run_dlt_loader(server.endpoint_url, BUCKET, key, target, mode)
        found.append({**result, "name": name, "lines": len(kept)})
        target.unlink(missing_ok=True)
    config, _ = bench_config(server, workdir, key, DEFAULT_CHUNK_BYTES)  # the last: all JSON
    ours = child(["store", key, "compact"], {"KMDAGSTER_CONFIG": str(config)})
    found.append({**ours, "name": "kmdagster import alone, same JSON lines", "error": None})
    return found


def run_dlt_loader(endpoint: str, bucket: str, key: str, target: Path, mode: str) -> dict[str, Any]:
    """benchmarks/dlt_loader.py in dlt's environment: what it printed (seconds, rows, the
    error that stopped it)."""
    done = subprocess.run(
        [str(DLT_PYTHON), "benchmarks/dlt_loader.py", endpoint, bucket, key, str(target), mode],
        cwd=ROOT,
        # dlt reports usage to its makers' server unless told not to: nothing leaves here.
        env={**os.environ, "RUNTIME__DLTHUB_TELEMETRY": "false"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"dlt loader failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def dlt_report(found: list[dict[str, Any]]) -> str:
    out = [
        "| loader, sample | lines | seconds | lines/s | rows loaded | peak RSS MB | stopped by |"
    ]
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in found:
        tables = r.get("tables")
        rows = (
            ", ".join(f"{t} {n:,}" for t, n in sorted(tables.items())) or "none"
            if tables is not None
            else "every line loaded or rejected with its reason"
        )
        out.append(
            f"| {r['name']} | {r['lines']:,} | {r['seconds']:.1f} | "
            f"{r['lines'] / r['seconds']:,.0f} | {rows} | {r['peak_rss_mb']:,.0f} | "
            f"{r['error'] or ''} |"
        )
    return "\n".join(out)


def row(name: str, result: dict[str, Any], size: int) -> str:
    rate = result["lines"] / result["seconds"]
    return (
        f"| {name} | {result['lines']:,} | {result['seconds']:.1f} | {rate:,.0f} | "
        f"{size / MB / result['seconds']:,.1f} | {result['peak_rss_mb']:,.0f} |"
    )


def per_million(result: dict[str, Any]) -> str:
    return f"{result['cpu_seconds'] / (result['lines'] / 1e6):.1f}"


def storage_ceiling(stores: dict[str, dict[str, Any]]) -> str:
    """What the storage can gain at most: with every core busy, lines/s go as the inverse
    of the machine's CPU per line (importer and S3 server), and only the inserts differ."""
    machine = {
        layout: (r["cpu_seconds"] + r["server_cpu_seconds"]) / (r["lines"] / 1e6)
        for layout, r in stores.items()
    }
    inserts = {layout: machine[layout] - machine["no_rows"] for layout in ("wide", "compact")}
    return (
        f"machine CPU-s per million lines (importer + S3 server): reading and splitting "
        f"{machine['no_rows']:.1f}, + wide inserts {inserts['wide']:.1f}, + compact inserts "
        f"{inserts['compact']:.1f}; compact / wide at equal use of the cores: "
        f"{machine['wide'] / machine['compact']:.2f}x; 1.3x would need the compact inserts "
        f"at {machine['wide'] / 1.3 - machine['no_rows']:.1f}"
    )


def cpu_budget(result: dict[str, Any], cores: int) -> str:
    """Where the import's CPU went, and the rate the machine allows at that cost."""
    millions = result["lines"] / 1e6
    own, server = result["cpu_seconds"], result["server_cpu_seconds"]
    busy = (own + server) / (result["seconds"] * cores)
    ceiling = result["lines"] / ((own + server) / cores)
    return (
        f"import CPU per million lines: {own / millions:.1f} s in the import process, "
        f"{server / millions:.1f} s in the local S3 server; {busy:.0%} of {cores} cores busy; "
        f"at this cost the machine allows at most {ceiling:,.0f} lines/s"
    )


def scale_checks(
    server: SeaweedS3, client: Any, keys: int, matching: int, partitions: int
) -> dict[str, float]:
    """Sensor over ``keys`` keys of which ``matching`` match; a tick with ``partitions``
    registered files, all but 10 archived."""
    from dagster import build_schedule_context, build_sensor_context, instance_for_test

    from kmdagster.config import KmConfig, S3Settings, SourceConfig, WarehouseSettings
    from kmdagster.defs.factory import build_definitions

    bucket = f"km-scale-{secrets.token_hex(3)}"
    client.create_bucket(Bucket=bucket)
    others = keys - matching
    names = [f"accounts.{i:07d}.json" for i in range(matching)]
    names += [f"accounts.{i:07d}.csv" for i in range(others // 2)]  # same prefix, wrong type
    names += [f"events/{i:07d}.json" for i in range(others - others // 2)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"{}\n"), names))
    config = KmConfig(
        s3=S3Settings(endpoint_url=server.endpoint_url, region_name="us-east-1"),
        warehouse=WarehouseSettings(duckdb_path=str(ROOT / ".kmdagster" / "bench-scale.duckdb")),
        sources=(SourceConfig(name="accounts", bucket=bucket, base_filename="accounts.json"),),
    )
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def(SourceNames("accounts").sensor)
    with instance_for_test() as instance:  # a throwaway local instance
        started = time.perf_counter()
        with build_sensor_context(instance=instance, resources=defs.resources) as context:
            result = sensor(context)
        sensor_seconds = time.perf_counter() - started
        requested = result.dynamic_partitions_requests[0].partition_keys  # type: ignore[union-attr]
        assert len(requested) == matching, len(requested)
        # The tick's own case: many registered files, all but 10 archived (moved under
        # completed_imports/, which the listing never descends into), 10 still at the root.
        tick_bucket = f"km-tick-{secrets.token_hex(3)}"
        client.create_bucket(Bucket=tick_bucket)
        registered = [f"accounts.{i:07d}.json" for i in range(partitions)]
        archived = [f"completed_imports/2026/11/26/{key}" for key in registered[:-10]]
        with ThreadPoolExecutor(32) as pool:
            list(
                pool.map(
                    lambda key: client.put_object(Bucket=tick_bucket, Key=key, Body=b"{}\n"),
                    archived + registered[-10:],
                )
            )
        instance.add_dynamic_partitions(SourceNames("accounts").partitions, registered)
        tick_source = SourceConfig(
            name="accounts", bucket=tick_bucket, base_filename="accounts.json"
        )
        schedule = build_definitions(
            KmConfig(s3=config.s3, warehouse=config.warehouse, sources=(tick_source,))
        ).resolve_schedule_def(SourceNames("accounts").schedule)
        started = time.perf_counter()
        with build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime.now(timezone.utc),
            resources=defs.resources,
        ) as context:
            request = schedule(context)
        tick_seconds = time.perf_counter() - started
        assert getattr(request, "partition_key", None) == registered[-10]
    return {"sensor_seconds": sensor_seconds, "tick_seconds": tick_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    parser.add_argument("--rounds", type=int, default=3, help="turns of the one-core methods")
    parser.add_argument("--memory-gb", default="0.5,1,2", help="file sizes for RSS runs")
    parser.add_argument("--scale-keys", type=int, default=100_000)
    parser.add_argument("--tick-partitions", type=int, default=10_000)
    parser.add_argument("--dlt-lines", type=int, default=20_000, help="dlt comparison sample")
    parser.add_argument(
        "--invalid-gb", default="1", help="size of a file whose every line is invalid ('' skips)"
    )
    parser.add_argument("--workdir", default=str(ROOT / ".kmdagster" / "bench"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = generated(workdir, args.lines)
    size = path.stat().st_size
    # The import reads and splits in pieces, committing a chunk of them per transaction;
    # the methods on one core work on the same pieces.
    piece = str(min(args.chunk_bytes, PIECE_BYTES))
    one_core = {"POLARS_MAX_THREADS": "1"}
    # The one-core methods take turns, so each round sees the VM in one state; the
    # fastest round of each is reported, and the ratio of each round is printed too.
    rounds: dict[str, list[dict[str, Any]]] = {"floor": [], "baseline": [], "split": []}
    for _ in range(args.rounds):
        rounds["floor"].append(child(["floor", str(path), piece]))
        rounds["baseline"].append(child(["baseline", str(path), piece]))
        rounds["split"].append(child(["split", str(path), piece], one_core))
    results = {name: min(runs, key=lambda r: r["seconds"]) for name, runs in rounds.items()}
    round_ratios = [
        base["seconds"] / split["seconds"]
        for base, split in zip(rounds["baseline"], rounds["split"], strict=True)
    ]
    same_each_round = all(
        r["digest"] == results[name]["digest"] for name, runs in rounds.items() for r in runs
    )
    identity = Identity(
        "bench",
        "KMB" + secrets.token_hex(6).upper(),
        secrets.token_hex(20),
        ("Admin", "Read", "List", "Write"),
    )
    shutil.rmtree(workdir / "seaweedfs", ignore_errors=True)  # fresh S3 data each run
    server = SeaweedS3(workdir / "seaweedfs", (identity,)).start()
    memory_runs = []
    try:
        client = server.client(identity)
        client.create_bucket(Bucket=BUCKET)
        os.environ["AWS_ACCESS_KEY_ID"] = identity.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = identity.secret_key
        results["import"] = import_run(server, client, workdir, path, args.chunk_bytes)
        stores = storage_runs(server, client, workdir, path, args.chunk_bytes, args.rounds)
        dlt_found = dlt_runs(server, client, workdir, path, args.dlt_lines)
        for gigabytes in [float(g) for g in args.memory_gb.split(",") if g.strip()]:
            big = generated(workdir, int(gigabytes * 1024 * MB / AVERAGE_LINE_BYTES))
            measured = import_run(server, client, workdir, big, args.chunk_bytes)
            memory_runs.append((gigabytes, big.stat().st_size, measured))
        invalid_run = None
        if args.invalid_gb.strip():
            invalid = workdir / "accounts.invalid.json"
            invalid_lines = write_invalid_file(invalid, int(float(args.invalid_gb) * 1024 * MB))
            measured = import_run(server, client, workdir, invalid, args.chunk_bytes)
            assert measured["lines"] == invalid_lines
            invalid_run = (float(args.invalid_gb), invalid.stat().st_size, measured)
        matching = min(1000, args.scale_keys // 10)
        scale = scale_checks(server, client, args.scale_keys, matching, args.tick_partitions)
    finally:
        server.stop()

    same = same_each_round and (
        results["split"]["digest"] == results["baseline"]["digest"] == results["import"]["digest"]
    )
    print(
        f"\nfile: {path.name}, {args.lines:,} lines, {size / MB:,.0f} MB; "
        f"pieces of {int(piece) / MB:g} MB, chunks (transactions) of {args.chunk_bytes / MB:g} MB\n"
    )
    print("| method | lines | seconds | lines/s | MB/s | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(row("orjson parse only, no checks (1 core)", results["floor"], size))
    print(row("msgspec + checks and split in Python (1 core)", results["baseline"], size))
    print(row("kmdagster validate-and-split (polars, 1 core)", results["split"], size))
    print(row("kmdagster import job: S3 -> DuckDB (2 cores)", results["import"], size))
    for gigabytes, big_size, measured in memory_runs:
        print(row(f"import job, {gigabytes:g} GB file", measured, big_size))
    if invalid_run is not None:
        gigabytes, invalid_size, measured = invalid_run
        print(row(f"import job, {gigabytes:g} GB, every line invalid", measured, invalid_size))
    print(row("import alone, previous wide tables", stores["wide"], size))
    print(row("import alone, compact storage", stores["compact"], size))
    print(row("import alone, reading and splitting, no rows stored", stores["no_rows"], size))
    rate = {name: r["lines"] / r["seconds"] for name, r in results.items()}
    store_rate = {layout: r["lines"] / r["seconds"] for layout, r in stores.items()}
    storage_gain = store_rate["compact"] / store_rate["wide"]
    print(
        f"\ncompact / wide storage: {storage_gain:.2f}x lines/s (fastest of {args.rounds} "
        f"alternated rounds each); CPU-s per million lines {per_million(stores['wide'])} -> "
        f"{per_million(stores['compact'])}; DuckDB file {stores['wide']['file_mb']:,.0f} MB -> "
        f"{stores['compact']['file_mb']:,.0f} MB; peak RSS {stores['wide']['peak_rss_mb']:,.0f}"
        f" -> {stores['compact']['peak_rss_mb']:,.0f} MB"
    )
    print(storage_ceiling(stores))
    print(f"\nsame rows from baseline, split and import: {'yes' if same else 'NO'}")
    print(cpu_budget(results["import"], os.cpu_count() or 1))
    print(
        f"split / baseline: {rate['split'] / rate['baseline']:.2f}x (fastest of {args.rounds} "
        f"rounds each; round by round: {', '.join(f'{r:.2f}x' for r in round_ratios)}); "
        f"import / split: {rate['import'] / rate['split']:.2f}; "
        f"floor / split: {rate['floor'] / rate['split']:.2f}x"
    )
    print(
        f"sensor over {args.scale_keys:,} keys ({matching:,} matching): "
        f"{scale['sensor_seconds']:.2f}s; "
        f"schedule tick with {args.tick_partitions:,} partitions "
        f"({args.tick_partitions - 10:,} archived): {scale['tick_seconds']:.2f}s"
    )
    verdicts = [
        ("rows identical across methods", same),
        ("split >= 2x baseline", rate["split"] >= 2 * rate["baseline"]),
        ("import >= 250,000 lines/s", rate["import"] >= 250_000),
        ("import >= 60% of split", rate["import"] >= 0.6 * rate["split"]),
        (
            "import peak RSS < 512 MB",
            all(
                m["peak_rss_mb"] < 512
                for m in [
                    results["import"],
                    *(r[2] for r in memory_runs),
                    *([invalid_run[2]] if invalid_run else []),
                ]
            ),
        ),
        ("compact storage >= 1.3x the wide tables' import", storage_gain >= 1.3),
        ("sensor < 10 s", scale["sensor_seconds"] < 10),
        ("schedule tick < 2 s", scale["tick_seconds"] < 2),
    ]
    for gigabytes, _, measured in memory_runs:
        if gigabytes == 1:
            verdicts.append(
                (
                    f"1 GB file in {measured['seconds']:.0f}s, well inside 300 s",
                    measured["seconds"] < 150,
                )
            )
    print()
    for name, held in verdicts:
        print(f"{'HOLDS' if held else 'MISSED'}: {name}")
    print("\ndlt filesystem source (read_jsonl) into DuckDB, on the file's first lines:")
    print(dlt_report(dlt_found) if dlt_found else "skipped: no .venv-dlt (`make bench` makes it)")
    print("\nkm_people: alias groups merged chunk by chunk, then the view counted")
    people = subprocess.run(
        [sys.executable, "-m", "benchmarks.people"], cwd=ROOT, capture_output=True, text=True
    )
    print(people.stdout.strip() or people.stderr[-2000:])
    print("\nPostgreSQL: the warehouse beyond one machine, beside DuckDB")
    postgres = subprocess.run(
        [sys.executable, "-m", "benchmarks.postgres_scale", str(path),
         "--loader-rows", str(min(args.lines, 2_000_000)), "--rounds", str(args.rounds)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )  # fmt: skip
    print(postgres.stdout.strip() or postgres.stderr[-2000:])
    return 0 if same and people.returncode == 0 and postgres.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
