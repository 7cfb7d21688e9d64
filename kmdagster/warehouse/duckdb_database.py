"""The embedded backend: one DuckDB file, one writing process at a time."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from kmdagster.warehouse.database import (
    Params,
    WarehouseSchemaError,
    WarehouseUnavailable,
    placeholders,
    sequence_ids,
)

DUCKDB_MEMORY_LIMIT = "64MB"
READER_MEMORY_LIMIT = "1GB"
CHECKPOINT_THRESHOLD = "256MB"


class WarehouseBusy(WarehouseUnavailable):
    """Another process (an import run) holds the DuckDB file's lock."""


def memory_limit(read_only: bool) -> str:
    """DuckDB caches up to 80% of RAM by default; an import needs little of it. A reader
    (an analyst's query) gets more: km_people over a million identities needs more than
    64 MB in DuckDB 1.5. The limit is the whole connection's, its cursors' too."""
    return READER_MEMORY_LIMIT if read_only else DUCKDB_MEMORY_LIMIT


def connect_waiting(
    path: Path, read_only: bool, lock_wait_seconds: float
) -> duckdb.DuckDBPyConnection:
    """Connect, waiting while another process holds the file (DuckDB admits one writer)."""
    deadline = time.monotonic() + lock_wait_seconds
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "not a valid DuckDB database file" in str(exc):
                raise WarehouseSchemaError(
                    f"the warehouse file {path} is not a DuckDB database; point "
                    "warehouse.duckdb_path at a new path (kmdagster creates the file) or move "
                    "that file away"
                ) from exc
            if "database file with version number" in str(exc):
                raise newer_storage_error(path) from exc
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() > deadline:
                raise WarehouseBusy(
                    f"the warehouse {path} was held by {lock_holder(str(exc))} for over "
                    f"{lock_wait_seconds:.0f}s. A DuckDB file admits one process at a time, "
                    "and any open connection holds it, read-only ones too (a notebook, the "
                    "DuckDB CLI): close it, or query with `kmdagster sql`, which holds the "
                    "file only while its query runs"
                ) from exc
            time.sleep(0.5)


def newer_storage_error(path: Path) -> WarehouseSchemaError:
    """A file in a newer DuckDB's storage format: this DuckDB (pinned to the version its
    DuckLake and scanner extensions are built for) cannot read it, but can import it."""
    return WarehouseSchemaError(
        f"the warehouse file {path} was written by a newer DuckDB than the {duckdb.__version__} "
        "kmdagster runs (pinned to match its DuckLake extension). Move it: open it with the "
        "DuckDB that wrote it and run EXPORT DATABASE 'km_export', then point "
        "warehouse.duckdb_path at a new file and run `kmdagster import-warehouse km_export` "
        '(docs/deploy.md, "Moving a DuckDB warehouse between DuckDB versions")'
    )


def import_export(path: Path, export_dir: Path) -> None:
    """Make the DuckDB file ``path`` from ``export_dir``, written by any DuckDB's
    ``EXPORT DATABASE``: how a warehouse moves between DuckDB storage formats."""
    if not (export_dir / "schema.sql").is_file():
        raise WarehouseSchemaError(
            f"{export_dir} holds no schema.sql: give the folder EXPORT DATABASE wrote"
        )
    if path.exists() and not is_empty_file(path):
        raise WarehouseSchemaError(
            f"{path} already exists; point warehouse.duckdb_path at a new file to import into"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    quoted = str(export_dir).replace("'", "''")  # IMPORT DATABASE takes no parameters
    with duckdb.connect(str(path)) as con:
        con.execute(f"IMPORT DATABASE '{quoted}'")


def lock_holder(lock_error: str) -> str:
    """The process DuckDB's lock error names, with its command line when it is readable
    here (the same machine): an import run and an analyst's notebook read differently."""
    found = re.search(r"held in (.+?) \(PID (\d+)\)", lock_error)
    if found is None:
        return "another process"
    program, pid = found.groups()
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    except OSError:
        command = program
    return f"process {pid} ({command[:160] or program})"


def is_empty_file(path: Path) -> bool:
    """A file of no bytes (made by hand, or cut before DuckDB wrote its header)."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return False


def _arrow(frame: pl.DataFrame) -> Any:
    # String views as polars holds them: no conversion on the way to DuckDB.
    return frame.to_arrow(compat_level=pl.CompatLevel.newest())


class DuckDBDatabase:
    backend = "duckdb"
    reads_string_views = True
    sql_skip_duplicates = "ON CONFLICT DO NOTHING"
    appends_ledger = False
    merges_aliases_apart = False

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, writer: bool) -> None:
        self.connection = con
        self.location = str(path)
        con.execute("SET TimeZone = 'UTC'")
        if writer:
            # Checkpoint (compress and rewrite) once per ~256 MB of WAL, not at every
            # chunk's commit: it halves the cost of loading, and the WAL is as durable.
            con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            # The import's own threads split on the other cores; DuckDB's workers would only
            # contend with them (measured: about 20% less CPU per commit with one).
            con.execute("SET threads = 1")

    @classmethod
    @contextmanager
    def open(
        cls, path: str | Path, read_only: bool, lock_wait_seconds: float
    ) -> Iterator[DuckDBDatabase]:
        path = Path(path)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
            if is_empty_file(path):  # holds nothing: DuckDB would refuse it as foreign
                path.unlink()
        con = connect_waiting(path, read_only=read_only, lock_wait_seconds=lock_wait_seconds)
        try:
            con.execute(f"SET memory_limit = '{memory_limit(read_only)}'")
            yield cls(con, path, writer=not read_only)
        finally:
            con.close()

    def execute(self, sql: str, params: Params = ()) -> None:
        self.connection.execute(sql, list(params))

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, list(params)).fetchall()

    def changed_rows(self, sql: str, params: Params = ()) -> int:
        [(count,)] = self.rows(sql, params)
        return int(count)

    def frame(self, sql: str, params: Params = ()) -> pl.DataFrame:
        return self.connection.sql(sql, params=list(params)).pl()

    def batches(self, sql: str, params: Params, batch_rows: int) -> Iterator[pl.DataFrame]:
        with self.cursor() as cursor:
            # A relation streams its result; a DB-API result would be copied whole first.
            reader = cursor.sql(sql, params=list(params)).to_arrow_reader(batch_rows)
            for batch in reader:
                yield pl.DataFrame(pl.from_arrow(batch))

    def append(self, table: str, rows: pa.Table, constants: Mapping[str, pa.Scalar]) -> None:
        # Read by DuckDB's replacement scan of this function's locals. A registered view of
        # the same data (``temporary``) kept the import's peak RSS about 100 MB higher.
        km_appended_rows = rows  # noqa: F841
        columns = ", ".join([*rows.column_names, *constants])
        # Constants as parameters: DuckDB stores a constant vector without looking at it.
        values = ", ".join([*rows.column_names, placeholders(len(constants))])
        self.connection.execute(
            f"INSERT INTO {table} ({columns}) SELECT {values} FROM km_appended_rows",
            [value.as_py() for value in constants.values()],
        )

    @contextmanager
    def temporary(self, name: str, frame: pl.DataFrame) -> Iterator[None]:
        self.connection.register(name, _arrow(frame))
        try:
            yield
        finally:
            self.connection.unregister(name)

    def begin(self) -> None:
        self.connection.begin()

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        self.connection.rollback()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A second connection to the same database, with transactions of its own."""
        return self.connection.cursor()

    def autonomous(self) -> DuckDBDatabase:
        return DuckDBDatabase(self.cursor(), Path(self.location), writer=False)

    def serialize(self, name: str) -> None:
        """Nothing to wait for: a DuckDB file has one writing process."""

    def next_ids(self, sequence: str, count: int) -> list[int]:
        return sequence_ids(self, sequence, count)

    def checkpoint(self) -> None:
        self.connection.execute("CHECKPOINT")

    def close(self) -> None:
        self.connection.close()

    def sql_distinct_estimate(self, column: str) -> str:
        # HyperLogLog, within a few percent: memory stays constant whatever the file's size.
        return f"approx_count_distinct({column})"
