"""How a chunk's rows reach a lake: DuckDB's INSERT against Parquet files written by
polars and added to the chunk's transaction with ``ducklake_add_data_files``.

    python -m benchmarks.lake_writes                 # 400,000 property-heavy lines
    python -m benchmarks.lake_writes --lines 100000

The same pieces (split and laid out as the import does, names given ids) are appended to
a fresh lake (local DuckDB-file catalog and folder) both ways, 25,000-line pieces, each
chunk of four pieces one transaction with a ledger row. Each way runs in a process of its
own, in turn, ``--rounds`` times (``insert-zstd``: the INSERT with the lake's Parquet
compression set to zstd, as polars writes); the figures are wall and CPU seconds of the appends and
commits only (the split is not timed), and the bytes the lake's files hold.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

PIECE_LINES = 25_000
PIECES_PER_CHUNK = 4
TABLES = {
    "km_events": "km_event_rows",
    "km_properties": "km_property_rows",
    "km_aliases": "km_alias_rows",
    "km_rejects": "km_reject_rows",
}


def _pieces(lines: int) -> list[dict[str, pa.Table]]:
    from kmdagster.km_format.split import split_km_lines
    from kmdagster.warehouse.piece_rows import piece_rows
    from kmdagster_dev.km_files import PROFILES

    data = PROFILES["property_heavy"](lines)
    starts = [0]
    for _ in range(0, lines, PIECE_LINES):
        cut = data.find(b"\n", starts[-1] + 1)
        for _ in range(PIECE_LINES - 1):
            if cut < 0:
                break
            cut = data.find(b"\n", cut + 1)
        starts.append(len(data) if cut < 0 else cut + 1)
        if cut < 0:
            break
    pieces = []
    for number, (start, end) in enumerate(zip(starts, starts[1:], strict=False)):
        split = split_km_lines(data[start:end], 1 + number * PIECE_LINES, 1_800_000_000)
        laid_out = piece_rows(split, pl.CompatLevel.newest())
        tables = {}
        for relation, rows in laid_out.rows.items():
            codes = laid_out.names.get(relation)
            if codes is not None:  # a stand-in for the warehouse's name ids
                rows = rows.append_column("name_id", codes.codes)
            file_id = pa.array([1] * rows.num_rows, type=pa.int32())
            tables[TABLES[relation]] = rows.append_column("file_id", file_id)
        pieces.append(tables)
    return pieces


def _lake(folder: Path) -> Any:
    import duckdb

    from kmdagster.warehouse.ducklake_database import extension_file

    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute("SET threads = 1")  # as the import's writer
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"LOAD '{extension_file('ducklake')}'")
    con.execute(f"ATTACH 'ducklake:{folder}/catalog.ducklake' AS lake (DATA_PATH '{folder}/data')")
    con.execute("USE lake")
    from kmdagster.warehouse.schema import TABLES as COLUMNS

    for table in [*TABLES.values()]:
        con.execute(f"CREATE TABLE {table} ({COLUMNS[table][0]})")
    con.execute("CREATE TABLE ledger (chunk INTEGER, pieces INTEGER)")
    return con


def run_way(way: str, lines: int) -> dict[str, float]:
    pieces = _pieces(lines)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        con = _lake(folder)
        if way == "insert-zstd":
            con.execute("CALL lake.set_option('parquet_compression', 'zstd')")
        data = folder / "data" / "main"
        started = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_started = usage.ru_utime + usage.ru_stime
        for chunk, first in enumerate(range(0, len(pieces), PIECES_PER_CHUNK)):
            con.begin()
            for piece in pieces[first : first + PIECES_PER_CHUNK]:
                for table, rows in piece.items():
                    if not rows.num_rows:
                        continue
                    if way.startswith("insert"):
                        km_rows = rows  # noqa: F841 (DuckDB's replacement scan)
                        con.execute(
                            f"INSERT INTO {table} ({', '.join(rows.column_names)}) "
                            f"SELECT {', '.join(rows.column_names)} FROM km_rows"
                        )
                    else:
                        path = data / table / f"kmdagster-{uuid.uuid4()}.parquet"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        frame = pl.DataFrame(pl.from_arrow(rows))
                        frame.write_parquet(path, compression="zstd", statistics=True)
                        con.execute(f"CALL ducklake_add_data_files('lake', '{table}', '{path}')")
            con.execute("INSERT INTO ledger VALUES ($1, $2)", [chunk, PIECES_PER_CHUNK])
            con.commit()
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu_started
        [(properties,)] = con.execute("SELECT count(*) FROM km_property_rows").fetchall()
        stored = sum(file.stat().st_size for file in (folder / "data").rglob("*") if file.is_file())
        con.close()
    return {"seconds": seconds, "cpu": cpu, "property_rows": properties, "bytes": stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--way", help=argparse.SUPPRESS)  # in the child: one way, one run
    args = parser.parse_args()
    if args.way:
        print(json.dumps(run_way(args.way, args.lines)))
        return
    results: dict[str, list[dict[str, float]]] = {"insert": [], "insert-zstd": [], "parquet": []}
    for _ in range(args.rounds):
        for way in results:
            child = [sys.executable, "-m", "benchmarks.lake_writes", "--way", way]
            out = subprocess.run(
                [*child, "--lines", str(args.lines)], capture_output=True, text=True, check=True
            )
            results[way].append(json.loads(out.stdout))
    print(f"{args.lines:,} property-heavy lines, {args.rounds} rounds, medians by wall time:")
    median = {
        way: sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]
        for way, runs in results.items()
    }
    for way, run in median.items():
        print(
            f"  {way:8} {run['seconds']:6.2f} s wall  {run['cpu']:6.2f} CPU s  "
            f"{run['property_rows']:,} property rows  {run['bytes'] / 2**20:6.1f} MB stored"
        )
    for way in ("insert-zstd", "parquet"):
        ratio = median["insert"]["seconds"] / median[way]["seconds"]
        print(f"  {way}: {ratio:.2f}x the speed of DuckLake's INSERT (its default Parquet)")


if __name__ == "__main__":
    main()
