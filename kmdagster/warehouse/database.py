"""What the warehouse needs from a SQL database: statements, Arrow in and out, transactions.

Three implementations: ``DuckDBDatabase`` (an embedded file, ``duckdb_database.py``),
``PostgresDatabase`` (a server, through ADBC, ``postgres_database.py``) and
``DuckLakeDatabase`` (Parquet files and a catalog, ``ducklake_database.py``). The
warehouse's SQL is written once, with PostgreSQL's numbered parameters (``$1``, which
DuckDB takes too), in the dialect all accept; what differs is asked of the database by
name (``sql_*`` methods, ``next_ids``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import polars as pl
import pyarrow as pa

from kmdagster.warehouse.waits import retried_on_conflict

Params = Sequence[object]
T = TypeVar("T")


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


class WarehouseBusy(WarehouseUnavailable):
    """Another process holds a DuckDB file's lock (the warehouse's, or a lake catalog's)."""


class WarehouseConflict(RuntimeError):
    """Another writer committed a change to the same rows first (a DuckLake commit); this
    transaction left nothing behind and may be tried again from its start."""


class WarehouseSchemaError(RuntimeError):
    """The warehouse is not one this code reads and writes: another version's schema, or a
    file that is not a database at all."""


LEDGER_TABLE = "km_import_files"


class Database(Protocol):
    """One open connection to the warehouse's database."""

    location: str  # what to name in messages: a file path, or a URL without its password
    # The Arrow layout ``append`` reads: polars' newest (string views, no conversion) or
    # its oldest (plain strings).
    arrow_layout: pl.CompatLevel

    @property
    def ledger_writes(self) -> LedgerWrites:
        """The ledger updated in place, or appended to as revisions (a lake)."""
        ...

    @property
    def alias_merge(self) -> AliasMerge:
        """Alias groups merged in the chunk's transaction, or after it (a lake)."""
        ...

    @property
    def schema_layout(self) -> SchemaLayout:
        """Keyed tables and sequences, or a lake's revisions and counters."""
        ...

    def execute(self, sql: str, params: Params = ()) -> None: ...

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row of the result, fetched whole."""
        ...

    def changed_rows(self, sql: str, params: Params = ()) -> int:
        """Run an UPDATE or DELETE; how many rows it changed."""
        ...

    def frame(self, sql: str, params: Params = ()) -> pl.DataFrame: ...

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

    def next_ids(self, sequence: str, count: int) -> list[int]:
        """``count`` new ids of ``sequence`` (``km_file_ids``, ``km_name_ids``), never
        handed out before, drawn in the open transaction."""
        ...

    def checkpoint(self) -> None:
        """Write what the database still holds in its log into its files, if it keeps one."""
        ...

    def on_every_core(self) -> AbstractContextManager[None]:
        """Run the statements inside on every core (an embedded engine kept to one thread
        while the import's own threads split beside it): for the checks after an import."""
        ...

    def close(self) -> None: ...

    # What the dialects spell differently. A key's duplicates are skipped by the key
    # (DuckDB, PostgreSQL); a lake has no keys, and its inserts of new keys are made in
    # transactions that draw ids, which conflict with each other (``next_ids``).
    sql_skip_duplicates: str

    def sql_distinct_estimate(self, column: str) -> str: ...


class LedgerWrites(Protocol):
    """How a backend writes the ledger: ``UPDATED_IN_PLACE`` or ``APPENDED_REVISIONS``."""

    @property
    def first_rows_table(self) -> str:
        """Where a new file version's first row goes."""
        ...

    def update(self, changes: Mapping[str, str], where: str) -> str:
        """The statement that sets ``changes`` (column -> SQL expression over the row as
        it was) on the ledger rows ``where`` selects, reporting the rows it changed."""
        ...

    def record_run(
        self, database: Database, file_id: int, run_id: str, start: int, end: int, now: datetime
    ) -> None:
        """A run's chunk moved the file from ``start`` to ``end``: in ``km_import_runs``,
        one row per run and file version."""
        ...


class AliasMerge(Protocol):
    """When a backend merges a chunk's alias pairs into the groups: ``MERGED_IN_CHUNK`` or
    ``MERGED_APART`` (a lake)."""

    def in_chunk(self, database: Database, pairs: pl.DataFrame) -> None:
        """In the chunk's open transaction."""
        ...

    def after_chunk(
        self, database: Database, file_id: int, pairs: pl.DataFrame, through_line: int
    ) -> None:
        """Once the chunk, whose pairs go ``through_line`` of the file, committed."""
        ...

    def catch_up(self, database: Database) -> None:
        """When a writer opens the warehouse: merges a killed writer left undone."""
        ...


@dataclass(frozen=True)
class SchemaLayout:
    """How a backend lays out the schema: the script that makes it new, the table its
    ledger's columns live in (altered by an upgrade, then ``after_ledger_altered`` runs),
    and its own step to version 5, if any. Each backend's module holds its layout."""

    new_schema: str
    ledger_table: str = LEDGER_TABLE
    after_ledger_altered: str = ""
    to_version_5: Callable[[Database], None] | None = None


def sequence_ids(database: Database, sequence: str, count: int) -> list[int]:
    """``count`` values of a database sequence (DuckDB's and PostgreSQL's ``nextval``)."""
    rows = database.rows(f"SELECT nextval('{sequence}') FROM generate_series(1, $1)", [count])
    return [int(value) for (value,) in rows]


DISK_FULL = "No space left on device"


def disk_full_message(error: BaseException) -> str | None:
    """``error`` in words when the warehouse's disk filled, with what to do (None for
    any other error)."""
    text = str(error).strip()
    if DISK_FULL not in text:
        return None
    return (
        f"the warehouse's disk is full ({text.splitlines()[-1][:300]}): the chunk being "
        "written was not committed and the file resumes from its committed offset, nothing "
        "lost; free space on that disk (or move the warehouse) and the next run goes on"
    )


def rollback_after(database: Database, error: BaseException) -> None:
    """Roll back the open transaction after ``error``. A rollback that fails too (a failed
    commit has already ended the transaction; the connection is gone) is logged, never
    raised: ``error`` is what went wrong, and what the run must report."""
    try:
        database.rollback()
    except Exception as exc:  # noqa: BLE001  # whatever it is, the first error stands
        logging.getLogger("kmdagster").warning(
            "rollback after %s failed too (%s); the transaction had ended",
            type(error).__name__,
            str(exc).strip()[:300],
        )


def transaction(database: Database, work: Callable[[], T]) -> T:
    """``work()`` in a transaction of its own, committed; tried again from the start when
    the commit conflicts with another writer's (only a lake's commits do)."""

    def attempt() -> T:
        database.begin()
        try:
            result = work()
            database.commit()
            return result
        except BaseException as exc:
            rollback_after(database, exc)
            raise

    return retried_on_conflict(attempt, WarehouseConflict)
