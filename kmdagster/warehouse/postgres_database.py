"""The shared backend: a PostgreSQL database, through ADBC (Arrow in, Arrow out).

ADBC's PostgreSQL driver loads Arrow data with binary ``COPY`` and returns results as
Arrow, so rows never pass through Python one by one (measured against psycopg's COPY:
docs/performance.md). The password never appears in the configuration: libpq reads it
from ``PGPASSWORD`` or ``~/.pgpass``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from kmdagster.urls import without_password
from kmdagster.warehouse.database import Params, WarehouseUnavailable, sequence_ids
from kmdagster.warehouse.ledger_writes import UPDATED_IN_PLACE
from kmdagster.warehouse.people import MERGED_IN_CHUNK
from kmdagster.warehouse.schema import POSTGRES_LAYOUT


class WarehouseUnreachable(WarehouseUnavailable):
    """The PostgreSQL warehouse refused or did not answer the connection."""


def _execute(cursor: Any, sql: str, params: Params) -> None:
    cursor.execute(sql, list(params) or None)


def _arrow(frame: pl.DataFrame) -> Any:
    # Plain (not view) strings: the form every Arrow consumer reads.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


class PostgresDatabase:
    arrow_layout = pl.CompatLevel.oldest()  # the driver's COPY writer reads plain strings
    sql_skip_duplicates = "ON CONFLICT DO NOTHING"
    ledger_writes = UPDATED_IN_PLACE
    alias_merge = MERGED_IN_CHUNK
    schema_layout = POSTGRES_LAYOUT

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = without_password(url)
        try:
            self.connection = adbc.connect(url, autocommit=True)
        except adbc_driver_manager.Error as exc:
            raise WarehouseUnreachable(
                f"cannot connect to the PostgreSQL warehouse {self.location}: "
                f"{without_password(str(exc)).strip()}; check postgres_url, that the server "
                "is up, and PGPASSWORD (or ~/.pgpass) for the password"
            ) from None
        self.execute("SET TimeZone = 'UTC'")

    @classmethod
    @contextmanager
    def open(cls, url: str) -> Iterator[PostgresDatabase]:
        database = cls(url)
        try:
            yield database
        finally:
            database.close()

    def execute(self, sql: str, params: Params = ()) -> None:
        with self.connection.cursor() as cursor:
            _execute(cursor, sql, params)

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            _execute(cursor, sql, params)
            return cursor.fetchall()

    def changed_rows(self, sql: str, params: Params = ()) -> int:
        # The driver's rowcount is -1 for statements without a result: count what the
        # statement returns instead.
        counted = f"WITH changed AS ({sql} RETURNING 1) SELECT count(*) FROM changed"
        [(count,)] = self.rows(counted, params)
        return int(count)

    def frame(self, sql: str, params: Params = ()) -> pl.DataFrame:
        with self.connection.cursor() as cursor:
            _execute(cursor, sql, params)
            return pl.DataFrame(pl.from_arrow(cursor.fetch_arrow_table()))

    def append(self, table: str, rows: pa.Table, constants: Mapping[str, pa.Scalar]) -> None:
        for column, value in constants.items():
            every_row = pc.fill_null(pa.nulls(rows.num_rows, value.type), value)
            rows = rows.append_column(column, every_row)
        with self.connection.cursor() as cursor:
            cursor.adbc_ingest(table, rows, mode="append")

    @contextmanager
    def temporary(self, name: str, frame: pl.DataFrame) -> Iterator[None]:
        with self.connection.cursor() as cursor:
            cursor.adbc_ingest(name, _arrow(frame), mode="replace", temporary=True)
        try:
            yield
        finally:
            self.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")

    # Transactions go through the driver, not SQL: a statement that binds a timestamp runs
    # in a BEGIN ... COMMIT of the driver's own when it believes autocommit is on, and
    # that COMMIT would end a chunk's transaction half-way (its ROLLBACK then keeping the
    # rows). The DB-API rollback() does nothing on an autocommit connection.
    def begin(self) -> None:
        self._autocommit(False)

    def commit(self) -> None:
        self.connection.adbc_connection.commit()
        self._autocommit(True)

    def rollback(self) -> None:
        self.connection.adbc_connection.rollback()
        self._autocommit(True)

    def _autocommit(self, enabled: bool) -> None:
        self.connection.adbc_connection.set_options(
            **{"adbc.connection.autocommit": "true" if enabled else "false"}
        )

    def autonomous(self) -> PostgresDatabase:
        return PostgresDatabase(self.url)

    def serialize(self, name: str) -> None:
        # Held to the end of the transaction: writers of different sources share the tables.
        self.execute("SELECT pg_advisory_xact_lock(hashtext($1))", [f"kmdagster:{name}"])

    def next_ids(self, sequence: str, count: int) -> list[int]:
        return sequence_ids(self, sequence, count)

    def checkpoint(self) -> None:
        """PostgreSQL writes its log into its files itself."""

    @contextmanager
    def on_every_core(self) -> Iterator[None]:
        """PostgreSQL's server plans its own parallelism."""
        yield

    def close(self) -> None:
        self.connection.close()

    def sql_distinct_estimate(self, column: str) -> str:
        return f"count(DISTINCT {column})"  # exact: PostgreSQL has no built-in estimate
