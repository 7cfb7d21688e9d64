"""Beyond one machine: the PostgreSQL warehouse's figures beside DuckDB's.

    python -m benchmarks.postgres_scale FILE [--loader-rows N]   # FILE: accounts.*.json

Starts its own SeaweedFS and PostgreSQL (Debian's server, a throwaway cluster) and prints:
the time to build the definitions of 20 configured sources; ``import_file`` alone (no
Dagster) from S3 into DuckDB and into PostgreSQL, on the same file; two sources importing
into one PostgreSQL database one after the other and at the same time; and the bulk loader
chosen for PostgreSQL (ADBC, binary COPY from Arrow) against psycopg's COPY.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.run import child
from kmdagster.config import (
    KmConfig,
    S3Settings,
    SourceConfig,
    WarehouseSettings,
    config_yaml,
)
from kmdagster_dev.postgres import PostgresServer, postgres_bin_dir
from kmdagster_dev.seaweed import Identity, SeaweedS3

ROOT = Path(__file__).resolve().parent.parent

BUCKET = "km-bench-pg"
SOURCES_CONFIGURED = 20
LOADER_ROWS = 2_000_000
SETTLE_SECONDS = 1.0


def definitions_seconds(workdir: Path) -> dict[str, float]:
    """Building the Definitions of 20 sources (what a code server does at start, after
    importing Dagster), and the whole fresh process that loads the code location."""
    config = KmConfig(
        sources=tuple(
            SourceConfig(name=f"source_{i:02d}", bucket=f"bucket-{i}", base_filename=f"s{i}.json")
            for i in range(SOURCES_CONFIGURED)
        )
    )
    path = workdir / "twenty-sources.yaml"
    path.write_text(config_yaml(config))
    script = (
        "import time; started = time.perf_counter()\n"
        "import dagster\n"
        "imported = time.perf_counter()\n"
        "from kmdagster.definitions import defs\n"
        "defs.get_repository_def().get_all_jobs()\n"
        "done = time.perf_counter()\n"
        "print(imported - started, done - imported)"
    )
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "KMDAGSTER_CONFIG": str(path)},
        capture_output=True,
        text=True,
        check=True,
    )
    whole = time.perf_counter() - began
    dagster_import, build = (float(x) for x in done.stdout.split())
    return {"build": build, "dagster_import": dagster_import, "process": whole}


def store_config(
    workdir: Path, server: SeaweedS3, name: str, warehouse: WarehouseSettings
) -> dict[str, str]:
    config = KmConfig(
        s3=S3Settings(endpoint_url=server.endpoint_url, region_name="us-east-1"),
        warehouse=warehouse,
        sources=(SourceConfig(name=name, bucket=BUCKET, base_filename=f"{name}.json"),),
    )
    path = workdir / f"{name}-{secrets.token_hex(3)}.yaml"
    path.write_text(config_yaml(config))
    return {"KMDAGSTER_CONFIG": str(path)}


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children that have exited (PostgreSQL's
    backends: one per connection, gone when it closes), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def postmaster_pid(postgres: PostgresServer) -> int:
    return int((postgres.data_dir / "cluster" / "postmaster.pid").read_text().split()[0])


def with_server_cpu(postgres: PostgresServer, run: Any) -> dict[str, Any]:
    """``run()``'s result with the CPU seconds the PostgreSQL server spent meanwhile
    (read a second after each side: a backend's time counts once it has exited)."""
    time.sleep(SETTLE_SECONDS)
    before = tree_cpu_seconds(postmaster_pid(postgres))
    result = run()
    time.sleep(SETTLE_SECONDS)
    result["server_cpu_seconds"] = tree_cpu_seconds(postmaster_pid(postgres)) - before
    return result


def load_with_adbc(url: str, frame: pl.DataFrame) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(url) as con, con.cursor() as cursor:
        cursor.adbc_ingest("rows", frame.to_arrow(), mode="append")
        con.commit()


def load_with_psycopg_csv(url: str, frame: pl.DataFrame) -> None:
    import psycopg

    with psycopg.connect(url) as con, con.cursor() as cursor:
        buffer = io.BytesIO()
        frame.write_csv(buffer, include_header=False)
        with cursor.copy("COPY rows FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())
        con.commit()


LOADERS = {"adbc": load_with_adbc, "psycopg_csv": load_with_psycopg_csv}


def stored_size(env: dict[str, str]) -> dict[str, float]:
    """The warehouse database's size on disk after the import, and its property rows."""
    import adbc_driver_postgresql.dbapi as adbc

    from kmdagster.config import load_config

    url = load_config(Path(env["KMDAGSTER_CONFIG"])).warehouse.postgres_url
    assert url is not None
    with adbc.connect(url, autocommit=True) as con, con.cursor() as cursor:
        cursor.execute(
            "SELECT pg_database_size(current_database()), "
            "(SELECT count(*) FROM km_property_rows), (SELECT count(*) FROM km_event_rows)"
        )
        size, properties, events = cursor.fetchone()  # type: ignore[misc]
    return {"database_mb": size / 1024 / 1024, "property_rows": properties, "event_rows": events}


def loader_figures(postgres: PostgresServer, rows: int, rounds: int = 3) -> dict[str, Any]:
    """Property rows into an empty table, in one transaction: ADBC's ingest (binary COPY
    from Arrow) against psycopg's COPY of the CSV polars writes. The loaders take turns;
    the fastest round of each, with the CPU it took in the client and in the server."""
    import adbc_driver_postgresql.dbapi as adbc

    frame = pl.DataFrame(
        {
            "file_id": pl.Series([1] * rows, dtype=pl.Int32),
            "line_no": pl.int_range(rows, eager=True),
            "person": [f"user{i % 50_000}@example.com" for i in range(rows)],
            "ts": pl.from_epoch(
                pl.int_range(rows, eager=True) + 1_700_000_000, time_unit="s"
            ).dt.replace_time_zone("UTC"),
            "name_id": pl.Series([i % 40 for i in range(rows)], dtype=pl.Int32),
            "value": [f"value {i % 1000}" for i in range(rows)],
            "value_number": [float(i) if i % 3 == 0 else None for i in range(rows)],
        }
    )
    url = postgres.create_database(f"loader_{secrets.token_hex(3)}")
    with adbc.connect(url, autocommit=True) as con, con.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE rows (file_id integer, line_no bigint, person text, ts timestamptz, "
            "name_id integer, value text, value_number double precision)"
        )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in LOADERS}
    for _ in range(rounds):
        for name, load in LOADERS.items():
            with adbc.connect(url, autocommit=True) as con, con.cursor() as cursor:
                cursor.execute("TRUNCATE rows")

            def timed(load: Any = load) -> dict[str, float]:
                started, cpu = time.perf_counter(), time.process_time()
                load(url, frame)
                return {
                    "seconds": time.perf_counter() - started,
                    "client_cpu_seconds": time.process_time() - cpu,
                }

            runs[name].append(with_server_cpu(postgres, timed))
    return {name: min(found, key=lambda r: r["seconds"]) for name, found in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres_scale")
    parser.add_argument("file", type=Path, help="a generated accounts.*.json")
    parser.add_argument("--loader-rows", type=int, default=LOADER_ROWS)
    parser.add_argument("--rounds", type=int, default=3, help="turns of the two loaders")
    args = parser.parse_args()
    path: Path = args.file
    if postgres_bin_dir() is None:
        print("skipped: no PostgreSQL server binaries (apt-get install postgresql)")
        return 0
    identity = Identity(
        "bench", "KMB" + secrets.token_hex(6).upper(), secrets.token_hex(20), ("Admin",)
    )
    with tempfile.TemporaryDirectory(prefix="km-bench-pg-") as scratch:
        workdir = Path(scratch)
        os.chmod(workdir, 0o755)  # the postgres user passes through it
        figures: dict[str, Any] = {"definitions": definitions_seconds(workdir)}
        server = SeaweedS3(workdir / "seaweedfs", (identity,)).start()
        # Autovacuum off: its workers' CPU would land in whichever measurement is going.
        postgres = PostgresServer(
            workdir / "postgres", secrets.token_hex(16), settings={"autovacuum": "off"}
        ).start()
        try:
            os.environ.update(
                AWS_ACCESS_KEY_ID=identity.access_key,
                AWS_SECRET_ACCESS_KEY=identity.secret_key,
                PGPASSWORD=postgres.password,
            )
            client = server.client(identity)
            client.create_bucket(Bucket=BUCKET)
            keys = {"accounts": "accounts.bench.json", "orders": "orders.bench.json"}
            for key in keys.values():
                client.upload_file(str(path), BUCKET, key)

            def pg(name: str) -> dict[str, str]:
                url = postgres.create_database(f"km_{secrets.token_hex(4)}")
                return store_config(
                    workdir, server, name, WarehouseSettings(backend="postgres", postgres_url=url)
                )

            duckdb = WarehouseSettings(duckdb_path=str(workdir / "bench.duckdb"))
            figures["duckdb"] = child(
                ["store", keys["accounts"], "compact"],
                store_config(workdir, server, "accounts", duckdb),
            )
            accounts_env = pg("accounts")
            figures["postgres"] = with_server_cpu(
                postgres, lambda: child(["store", keys["accounts"], "postgres"], accounts_env)
            )
            figures["postgres"].update(stored_size(accounts_env))
            # Two sources into one database: one after the other, then at the same time.
            shared = {name: pg(name) for name in keys}
            url = postgres.create_database(f"km_{secrets.token_hex(4)}")
            together = WarehouseSettings(backend="postgres", postgres_url=url)
            parallel_envs = {name: store_config(workdir, server, name, together) for name in keys}
            started = time.perf_counter()
            for name, key in keys.items():
                child(["store", key, "postgres"], shared[name])
            figures["sequential_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                runs = list(
                    pool.map(
                        lambda item: child(["store", item[1], "postgres"], parallel_envs[item[0]]),
                        keys.items(),
                    )
                )
            figures["parallel_seconds"] = time.perf_counter() - started
            figures["parallel_lines"] = sum(r["lines"] for r in runs)
            figures["loader"] = loader_figures(postgres, args.loader_rows, args.rounds)
            figures["loader_rounds"] = args.rounds
            figures["loader_rows"] = args.loader_rows
        finally:
            postgres.stop()
            server.stop()
    print(report(figures))
    same = figures["duckdb"]["lines"] == figures["postgres"]["lines"]
    print(f"same lines read into DuckDB and PostgreSQL: {'yes' if same else 'NO'}")
    return 0 if same else 1


def report(figures: dict[str, Any]) -> str:
    definitions = figures["definitions"]
    duckdb, postgres = figures["duckdb"], figures["postgres"]
    lines = duckdb["lines"]
    loader = figures["loader"]
    return "\n".join(
        [
            f"{SOURCES_CONFIGURED} sources: definitions built in {definitions['build']:.2f}s "
            f"(after importing dagster, {definitions['dagster_import']:.2f}s; the whole "
            f"process {definitions['process']:.2f}s)",
            "| import_file alone, S3 -> warehouse | lines | seconds | lines/s | importer CPU s "
            "| server CPU s | importer peak RSS MB |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *(
                f"| {name} | {r['lines']:,} | {r['seconds']:.1f} | "
                f"{r['lines'] / r['seconds']:,.0f} | {r['cpu_seconds']:.1f} | "
                f"{server} | {r['peak_rss_mb']:.0f} |"
                for name, r, server in (
                    ("DuckDB file", duckdb, "in the importer"),
                    ("PostgreSQL", postgres, f"{postgres['server_cpu_seconds']:.1f}"),
                )
            ),
            f"stored: DuckDB file {duckdb['file_mb']:,.0f} MB, PostgreSQL database "
            f"{postgres['database_mb']:,.0f} MB ({postgres['event_rows']:,} event rows, "
            f"{postgres['property_rows']:,} property rows)",
            f"two sources into one PostgreSQL database, {lines:,} lines each: one after the "
            f"other {figures['sequential_seconds']:.1f}s, at the same time "
            f"{figures['parallel_seconds']:.1f}s "
            f"({figures['sequential_seconds'] / figures['parallel_seconds']:.2f}x; "
            f"{figures['parallel_lines'] / figures['parallel_seconds']:,.0f} lines/s together)",
            f"PostgreSQL bulk load of {figures['loader_rows']:,} property rows (fastest of "
            f"{figures['loader_rounds']} rounds): "
            + "; ".join(
                f"{name} {r['seconds']:.2f}s, CPU {r['client_cpu_seconds']:.2f}s client + "
                f"{r['server_cpu_seconds']:.2f}s server"
                for name, r in (
                    ("ADBC binary COPY from Arrow", loader["adbc"]),
                    ("psycopg COPY of polars CSV", loader["psycopg_csv"]),
                )
            ),
            f"{'HOLDS' if definitions['build'] < 2 else 'MISSED'}: "
            f"{SOURCES_CONFIGURED} sources' definitions build < 2 s",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
