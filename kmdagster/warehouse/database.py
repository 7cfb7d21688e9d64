"""What the warehouse needs from a SQL database: statements, Arrow in and out, transactions.

Two implementations: ``DuckDBDatabase`` (an embedded file, ``duckdb_database.py``) and
``PostgresDatabase`` (a server, through ADBC, ``postgres_database.py``). The warehouse's
SQL is written once, with PostgreSQL's numbered parameters (``$1``, which DuckDB takes
too), in the dialect both accept; the few aggregates that differ are asked of the
database by name (``sql_*`` methods).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import polars as pl
import pyarrow as pa

Params = Sequence[object]


def placeholders(count: int, first: int = 1) -> str:
    """``$first, ..., $(first + count - 1)``: a run of numbered parameters."""
    return ", ".join(f"${n}" for n in range(first, first + count))


def sql_list(words: Sequence[str]) -> str:
    """``'a', 'b'`` for an SQL ``IN (...)``, for fixed words of the code (file states),
    never user input: those go in parameters."""
    return ", ".join(f"'{word}'" for word in words)


class WarehouseUnavailable(RuntimeError):
    """The warehouse cannot be reached now: held by an import (DuckDB) or not answering
    (PostgreSQL). Readers show what S3 alone tells; writers fail and retry next tick."""


class WarehouseSchemaError(RuntimeError):
    """The warehouse is not one this code reads and writes: another version's schema, or a
    file that is not a database at all."""


class Database(Protocol):
    """One open connection to the warehouse's database."""

    backend: str  # "duckdb" or "postgres": the value of the runs' warehouse tag
    location: str  # what to name in messages: a file path, or a URL without its password
    reads_string_views: bool  # whether ``append`` takes Arrow string views as they are

    def execute(self, sql: str, params: Params = ()) -> None: ...

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row of the result, fetched whole."""
        ...

    def frame(self, sql: str, params: Params = ()) -> pl.DataFrame: ...

    def batches(self, sql: str, params: Params, batch_rows: int) -> Iterator[pl.DataFrame]:
        """The result ``batch_rows`` at a time, on a cursor of its own (bounded memory)."""
        ...

    def append(self, table: str, rows: pa.Table, constants: Mapping[str, pa.Scalar]) -> None:
        """Bulk-insert ``rows`` into ``table`` (columns by name), in the open transaction,
        with each of ``constants`` (column -> value) in every row."""
        ...

    def temporary(self, name: str, frame: pl.DataFrame) -> AbstractContextManager[None]:
        """``frame`` readable as table ``name`` by statements inside the block."""
        ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def autonomous(self) -> Database:
        """A second connection to the same database, its statements committed on their own
        (outside the open transaction)."""
        ...

    def serialize(self, name: str) -> None:
        """Wait until no other writer's open transaction has taken ``name``; hold it to the
        end of this transaction (for work two sources' imports must not interleave)."""
        ...

    def checkpoint(self) -> None:
        """Write what the database still holds in its log into its files, if it keeps one."""
        ...

    def close(self) -> None: ...

    # Aggregates the two dialects spell differently.
    def sql_most_common(self, column: str) -> str: ...

    def sql_distinct_estimate(self, column: str) -> str: ...
