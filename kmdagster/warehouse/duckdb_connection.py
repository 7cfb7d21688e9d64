"""What the DuckDB file and the lake share: a DuckDB connection, as a ``Database``.

Statements, Arrow in and out, and transactions are DuckDB's own whatever it holds; the
backends (``duckdb_database.py``, ``ducklake_database.py``) say how the connection is
made, how ids are drawn, and how the ledger and alias groups are written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from kmdagster.warehouse.database import Params, placeholders

WRITER_THREADS = 1

WRITER_MEMORY_MB = 64
WRITER_MEMORY_LIMIT = f"{WRITER_MEMORY_MB}MB"
READER_MEMORY_LIMIT = "1GB"


def memory_limit(read_only: bool) -> str:
    """DuckDB caches up to 80% of RAM by default; an import needs little of it. A reader
    (an analyst's query) gets more: km_people over a million identities needs more than
    64 MB in DuckDB 1.5. The limit is the whole connection's, its cursors' too."""
    return READER_MEMORY_LIMIT if read_only else WRITER_MEMORY_LIMIT


def _arrow(frame: pl.DataFrame) -> Any:
    # String views as polars holds them: no conversion on the way to DuckDB.
    return frame.to_arrow(compat_level=pl.CompatLevel.newest())


class DuckDBConnection:
    """A DuckDB connection (to a file, or with a lake attached and in use)."""

    arrow_layout = pl.CompatLevel.newest()  # string views, as polars holds them
    sql_skip_duplicates = "ON CONFLICT DO NOTHING"

    def __init__(self, con: duckdb.DuckDBPyConnection, location: str, writer: bool) -> None:
        self.connection = con
        self.location = location
        con.execute("SET TimeZone = 'UTC'")
        if writer:
            # The import's own threads split on the other cores; DuckDB's workers would only
            # contend with them (measured: about 20% less CPU per commit with one).
            con.execute(f"SET threads = {WRITER_THREADS}")

    @contextmanager
    def on_every_core(self) -> Iterator[None]:
        # Once the import has stopped splitting, its checks read every row of the file:
        # on two cores in half the time (the same CPU). Each thread of a grouping holds
        # buffers DuckDB cannot spill (32 MB each over the rows of a large file), so each
        # gets the writer's memory: with two threads in 64 MB in all, the duplicate check
        # of a 2 GB file ran out of memory.
        [(threads, limit)] = self.rows(
            "SELECT current_setting('threads'), current_setting('memory_limit')"
        )
        cores = os.cpu_count() or 1
        self.connection.execute(f"SET threads = {cores}")
        self.connection.execute(f"SET memory_limit = '{cores * WRITER_MEMORY_MB}MB'")
        try:
            yield
        finally:
            self.connection.execute(f"SET threads = {int(threads)}")
            self.connection.execute(f"SET memory_limit = '{limit}'")

    def execute(self, sql: str, params: Params = ()) -> None:
        self.connection.execute(sql, list(params))

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, list(params)).fetchall()

    def changed_rows(self, sql: str, params: Params = ()) -> int:
        [(count,)] = self.rows(sql, params)
        return int(count)

    def frame(self, sql: str, params: Params = ()) -> pl.DataFrame:
        return self.connection.sql(sql, params=list(params)).pl()

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

    def close(self) -> None:
        self.connection.close()

    def sql_distinct_estimate(self, column: str) -> str:
        # HyperLogLog, within a few percent: memory stays constant whatever the file's size.
        return f"approx_count_distinct({column})"
