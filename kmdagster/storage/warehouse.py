"""The warehouse: KM rows plus the import ledger, one transaction per chunk.

``Warehouse`` is the small interface the importer and archiver need; ``DuckDBWarehouse``
implements it on an embedded DuckDB file (schema and upgrades: ``schema.py``). A
PostgreSQL backend would implement the same methods over the same relations.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import duckdb
import polars as pl

from kmdagster.faults import crash_point
from kmdagster.format.split import SplitLines
from kmdagster.format.summary import KnownNames
from kmdagster.storage.names import NameIds
from kmdagster.storage.people import add_alias_pairs
from kmdagster.storage.schema import (
    ROW_COUNT_COLUMNS,
    ROW_TABLES,
    STORAGE_TABLES,
    check_readable,
    prepare_for_writing,
)

STATUSES = ("pending", "in_progress", "imported", "archived", "failed")
LOCK_WAIT_SECONDS = 120.0
DUCKDB_MEMORY_LIMIT = "64MB"
CHECKPOINT_THRESHOLD = "256MB"

# Each table's row count is added in the ledger update of the chunk that inserted them.
_ADD_ROW_COUNTS = ", ".join(f"{c} = {c} + ?" for c in ROW_COUNT_COLUMNS.values())
_LEDGER_COLUMNS = (
    "source, file_key, file_etag, size_bytes, status, next_offset, lines_read, lines_loaded, "
    "lines_rejected, lines_blank, started_at, completed_at, archived_key, error, updated_at, "
    "events_rows, properties_rows, aliases_rows, rejects_rows, import_runs, file_id"
)


class WarehouseBusy(RuntimeError):
    """Another process (an import run) holds the DuckDB file's lock."""


def _connect_waiting(
    path: Path, read_only: bool, lock_wait_seconds: float
) -> duckdb.DuckDBPyConnection:
    """Connect, waiting while another process holds the file (DuckDB admits one writer)."""
    deadline = time.monotonic() + lock_wait_seconds
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() > deadline:
                raise WarehouseBusy(
                    f"the warehouse {path} is held by another process (an import run?) "
                    f"for over {lock_wait_seconds:.0f}s; try again when it finishes"
                ) from exc
            time.sleep(0.5)


class LedgerConflict(RuntimeError):
    """The ledger moved under us: another import of the same file committed first."""


@dataclass(frozen=True)
class LedgerRow:
    """One file version's import state, as committed."""

    source: str
    file_key: str
    file_etag: str
    size_bytes: int
    status: str
    next_offset: int
    lines_read: int
    lines_loaded: int
    lines_rejected: int
    lines_blank: int
    started_at: datetime | None
    completed_at: datetime | None
    archived_key: str | None
    error: str | None
    updated_at: datetime | None = None
    # Rows this file version put in each table, committed with them (zero before its first
    # chunk), and how many runs committed at least one of its chunks.
    events_rows: int = 0
    properties_rows: int = 0
    aliases_rows: int = 0
    rejects_rows: int = 0
    import_runs: int = 0
    file_id: int = 0  # what the file's rows point at in the storage tables

    @property
    def is_complete(self) -> bool:
        return self.status in ("imported", "archived")

    @property
    def percent_done(self) -> float:
        """Bytes committed as a share of the file, 100 for an empty file."""
        return round(100.0 * self.next_offset / self.size_bytes, 2) if self.size_bytes else 100.0

    def rows_in(self, table: str) -> int:
        """The rows this file version committed to ``table`` (one of ``ROW_TABLES``)."""
        return int(getattr(self, ROW_COUNT_COLUMNS[table]))


class Warehouse(Protocol):
    """What the importer and archiver need from a warehouse backend."""

    def open_file(self, source: str, key: str, etag: str, size: int) -> LedgerRow: ...

    def ledger_row(self, source: str, key: str, etag: str) -> LedgerRow | None: ...

    def latest_ledger_row(self, source: str, key: str) -> LedgerRow | None: ...

    def commit_chunk(
        self,
        row: LedgerRow,
        pieces: Iterable[tuple[SplitLines, int]],
        first_of_run: bool = False,
    ) -> LedgerRow: ...

    def mark_archived(self, row: LedgerRow, archived_key: str) -> LedgerRow: ...

    def mark_failed(self, row: LedgerRow, error: str) -> LedgerRow: ...


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class DuckDBWarehouse:
    """An embedded DuckDB file. Open it with ``connect()`` for the length of one step."""

    def __init__(
        self, connection: duckdb.DuckDBPyConnection, path: str | Path, read_only: bool = False
    ) -> None:
        self._con = connection
        self._names = NameIds()
        self.upgraded_from: int | None = None  # the schema version a writer found
        self._con.execute("SET TimeZone = 'UTC'")
        # DuckDB caches up to 80% of RAM by default; an import needs little of it.
        self._con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        if not read_only:
            # Checkpoint (compress and rewrite) once per ~256 MB of WAL, not at every
            # chunk's commit: it halves the cost of loading, and the WAL is as durable.
            self._con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            # The import's own threads split on the other cores; DuckDB's workers would only
            # contend with them (measured: about 20% less CPU per commit with one).
            self._con.execute("SET threads = 1")
            self.upgraded_from = prepare_for_writing(self._con, str(path))
        else:
            check_readable(self._con, str(path))

    @classmethod
    @contextmanager
    def connect(
        cls, path: str | Path, lock_wait_seconds: float = LOCK_WAIT_SECONDS
    ) -> Iterator[DuckDBWarehouse]:
        """Open the DuckDB file for writing, creating it and its tables if needed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = _connect_waiting(path, read_only=False, lock_wait_seconds=lock_wait_seconds)
        try:
            yield cls(connection, path)
        finally:
            connection.close()

    @classmethod
    @contextmanager
    def read_only(
        cls, path: str | Path, lock_wait_seconds: float = 10.0
    ) -> Iterator[DuckDBWarehouse | None]:
        """Open an existing DuckDB file read-only; None when there is no warehouse yet.

        Never creates the file, so previews and status reports leave no trace. Raises
        ``WarehouseBusy`` when an import run holds the file past ``lock_wait_seconds``.
        """
        path = Path(path)
        if not path.exists():
            yield None
            return
        connection = _connect_waiting(path, read_only=True, lock_wait_seconds=lock_wait_seconds)
        try:
            yield cls(connection, path, read_only=True)
        finally:
            connection.close()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        return self._con

    def _select_row(self, where: str, params: list[object]) -> LedgerRow | None:
        found = self._con.execute(
            f"SELECT {_LEDGER_COLUMNS} FROM km_import_files WHERE {where}", params
        ).fetchone()
        return LedgerRow(*found) if found else None

    def ledger_row(self, source: str, key: str, etag: str) -> LedgerRow | None:
        return self._select_row(
            "source = ? AND file_key = ? AND file_etag = ?", [source, key, etag]
        )

    def latest_ledger_row(self, source: str, key: str) -> LedgerRow | None:
        return self._select_row(
            "source = ? AND file_key = ? ORDER BY updated_at DESC LIMIT 1", [source, key]
        )

    def ledger_rows(self, source: str) -> list[LedgerRow]:
        rows = self._con.execute(
            f"SELECT {_LEDGER_COLUMNS} FROM km_import_files WHERE source = ? "
            "ORDER BY file_key, updated_at",
            [source],
        ).fetchall()
        return [LedgerRow(*row) for row in rows]

    def known_names(self) -> KnownNames:
        """Every event and property name any source has loaded (lower-cased)."""
        names = "SELECT DISTINCT name FROM km_names WHERE kind = ?"
        events = self._con.execute(names, ["event"]).fetchall()
        properties = self._con.execute(names, ["property"]).fetchall()
        return KnownNames(
            events=frozenset(row[0] for row in events),
            properties=frozenset(row[0] for row in properties),
        )

    def open_file(self, source: str, key: str, etag: str, size: int) -> LedgerRow:
        """The ledger row of this file version, created as ``pending`` on first sight."""
        self._con.execute(
            "INSERT INTO km_import_files (source, file_key, file_etag, size_bytes, status, "
            "next_offset, lines_read, lines_loaded, lines_rejected, lines_blank, updated_at, "
            "file_id) VALUES (?, ?, ?, ?, 'pending', 0, 0, 0, 0, 0, ?, nextval('km_file_ids')) "
            "ON CONFLICT DO NOTHING",
            [source, key, etag, size, utc_now()],
        )
        row = self.ledger_row(source, key, etag)
        assert row is not None
        return row

    def commit_chunk(
        self,
        row: LedgerRow,
        pieces: Iterable[tuple[SplitLines, int]],
        first_of_run: bool = False,
    ) -> LedgerRow:
        """Insert a chunk's rows and advance the ledger in one transaction.

        ``pieces`` are the chunk's consecutive pieces in file order: each one's split and
        the file offset just after it, inserted as they come (an iterator may still be
        splitting the later ones); the ledger moves to the last offset and adds the rows
        of each table. ``first_of_run`` counts one more import run. The update is
        conditional on the offset we started from, so a second importer of the same file
        can never commit the same lines twice.
        """
        file_columns = [row.source, row.file_key, row.file_etag]
        con = self._con
        if not row.file_id:
            raise ValueError(f"ledger row of {row.file_key!r} has no file_id; open it first")
        next_offset = row.next_offset
        lines_read = lines_loaded = lines_rejected = lines_blank = 0
        rows: dict[str, int] = dict.fromkeys(ROW_TABLES, 0)
        aliases = []
        con.begin()
        try:
            for split, end in pieces:
                self._insert_rows(split, row.file_id)
                aliases.append(split.aliases.select("person", "alias"))
                next_offset = end
                lines_read += split.lines_read
                lines_loaded += split.loaded_lines
                lines_rejected += split.rejected_lines
                lines_blank += split.blank_lines
                for table, frame in split.tables().items():
                    rows[table] += frame.height
            if aliases:
                add_alias_pairs(con, pl.concat(aliases))
            complete = next_offset >= row.size_bytes
            now = utc_now()
            crash_point("commit_chunk.in_transaction")
            updated = con.execute(
                "UPDATE km_import_files SET next_offset = ?, status = ?, "
                "lines_read = lines_read + ?, lines_loaded = lines_loaded + ?, "
                "lines_rejected = lines_rejected + ?, lines_blank = lines_blank + ?, "
                "started_at = coalesce(started_at, ?), completed_at = ?, error = NULL, "
                f"updated_at = ?, {_ADD_ROW_COUNTS}, import_runs = import_runs + ? "
                "WHERE source = ? AND file_key = ? AND file_etag = ? AND next_offset = ? "
                f"RETURNING {_LEDGER_COLUMNS}",
                [
                    next_offset,
                    "imported" if complete else "in_progress",
                    lines_read,
                    lines_loaded,
                    lines_rejected,
                    lines_blank,
                    now,
                    now if complete else None,
                    now,
                    *rows.values(),
                    int(first_of_run),
                    *file_columns,
                    row.next_offset,
                ],
            ).fetchone()
            if updated is None:
                raise LedgerConflict(
                    f"s3 object {row.file_key!r} (etag {row.file_etag}) moved past offset "
                    f"{row.next_offset} in another import; this run stops without loading"
                )
            con.commit()
            self._names.commit()
        except BaseException:
            con.rollback()
            self._names.rollback()
            raise
        return LedgerRow(*updated)

    def _insert_rows(self, split: SplitLines, file_id: int) -> None:
        """Append one piece's rows to the storage tables, names replaced by their ids."""
        con, names = self._con, self._names
        rows = split.tables()
        rows["km_events"] = names.with_name_ids(con, "event", split.events, "event", "event_label")
        rows["km_properties"] = names.with_name_ids(
            con, "property", split.properties, "name", "name_label"
        )
        for relation, frame in rows.items():
            if frame.height:
                # String views as polars holds them: no conversion on the way to DuckDB.
                arrow_rows = frame.to_arrow(compat_level=pl.CompatLevel.newest())  # noqa: F841
                columns = ", ".join(frame.columns)
                con.execute(
                    f"INSERT INTO {STORAGE_TABLES[relation]} (file_id, {columns}) "
                    f"SELECT ?, {columns} FROM arrow_rows",
                    [file_id],
                )

    def checkpoint(self) -> None:
        """Write the committed rows still held in DuckDB's log into the file.

        Until a checkpoint those rows hold memory DuckDB cannot spill, so a query over a
        whole file's rows (the data checks) ran out of the 64 MB limit after a 2 GB import
        (32 million property rows); after it the same query needs 4 s and no more memory.
        Closing the warehouse would checkpoint anyway: this only moves the cost earlier.
        """
        self._con.execute("CHECKPOINT")

    def mark_archived(self, row: LedgerRow, archived_key: str) -> LedgerRow:
        return self._update_status(row, "archived", archived_key=archived_key)

    def mark_failed(self, row: LedgerRow, error: str) -> LedgerRow:
        return self._update_status(row, "failed", error=error)

    def _update_status(
        self,
        row: LedgerRow,
        status: str,
        archived_key: str | None = None,
        error: str | None = None,
    ) -> LedgerRow:
        updated = self._con.execute(
            "UPDATE km_import_files SET status = ?, archived_key = coalesce(?, archived_key), "
            "error = ?, updated_at = ? WHERE source = ? AND file_key = ? AND file_etag = ? "
            f"RETURNING {_LEDGER_COLUMNS}",
            [status, archived_key, error, utc_now(), row.source, row.file_key, row.file_etag],
        ).fetchone()
        assert updated is not None
        return LedgerRow(*updated)
