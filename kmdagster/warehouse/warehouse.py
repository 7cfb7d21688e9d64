"""The warehouse: KM rows plus the import ledger, one transaction per chunk.

``Warehouse`` holds what the importer, the archiver and the reports ask of it; the SQL it
sends is the same for every backend, run by a ``Database`` (a DuckDB file, PostgreSQL or a
DuckLake lake; ``backends.py`` opens the one the configuration names). Schema and
upgrades: ``schema.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa

from kmdagster.file_state import COMPLETE, RETIRED, UNFINISHED, State
from kmdagster.km_format.split import SplitLines
from kmdagster.km_format.summary import KnownNames
from kmdagster.seams import crash_point
from kmdagster.stages import timed
from kmdagster.warehouse.database import (
    Database,
    WarehouseBusy,
    WarehouseConflict,
    WarehouseUnavailable,
    placeholders,
    rollback_after,
    sql_list,
    transaction,
)
from kmdagster.warehouse.duckdb_database import DuckDBDatabase, is_empty_file
from kmdagster.warehouse.ledger_writes import LEDGER_COLUMNS
from kmdagster.warehouse.name_ids import NameIds
from kmdagster.warehouse.piece_rows import PieceRows, piece_rows
from kmdagster.warehouse.postgres_database import WarehouseUnreachable
from kmdagster.warehouse.schema import (
    ROW_COUNT_COLUMNS,
    ROW_TABLES,
    STORAGE_TABLES,
    check_readable,
    has_schema,
    prepare_for_writing,
)

__all__ = ["WarehouseBusy", "WarehouseConflict", "WarehouseUnavailable", "WarehouseUnreachable"]

LOCK_WAIT_SECONDS = 120.0
# A checkpoint is worth its cost once this much of files is held in the WAL (DuckDB's own
# automatic checkpoint waits for 256 MB, see duckdb_database.CHECKPOINT_THRESHOLD).
CHECKPOINT_AFTER_BYTES = 16 * 1024 * 1024
APPEND_BYTES = 4 * 1024 * 1024  # a table's rows gathered from a chunk's pieces per append

# What a chunk's commit sets on its ledger row: each table's row count is added too
# (parameters $10 on), then the run count; the row is the one still at the chunk's start.
_AFTER_ROW_COUNTS = 10 + len(ROW_COUNT_COLUMNS)  # the number of the next parameter
_CHUNK_CHANGES = {
    "next_offset": "$1",
    "status": "$2",
    "lines_read": "lines_read + $3",
    "lines_loaded": "lines_loaded + $4",
    "lines_rejected": "lines_rejected + $5",
    "lines_blank": "lines_blank + $6",
    "started_at": "coalesce(started_at, $7)",
    "completed_at": "$8",
    "error": "NULL",
    "updated_at": "$9",
    **{column: f"{column} + ${n}" for n, column in enumerate(ROW_COUNT_COLUMNS.values(), 10)},
    "import_runs": f"import_runs + {placeholders(1, _AFTER_ROW_COUNTS)}",
    "read_offset": placeholders(1, _AFTER_ROW_COUNTS + 1),
}
_CHUNK_ROW = (
    f"(source, file_key, file_etag, next_offset) = ({placeholders(4, _AFTER_ROW_COUNTS + 2)})"
)
_STATUS_CHANGES = {
    "status": "$1",
    "archived_key": "coalesce($2, archived_key)",
    "error": "$3",
    "updated_at": "$4",
}
_KEYS_PER_QUERY = 1000  # keys named in one query: far below either database's limit


@dataclass(frozen=True)
class PieceEnd:
    """Where a chunk's piece ends: the offset after it in the file's lines (for a
    compressed file, its uncompressed stream), whether the file is whole there, and the
    bytes of the S3 object read to reach it."""

    offset: int
    last: bool
    read_offset: int


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
    # Bytes of the S3 object read to reach ``next_offset``: the same for a plain file; for
    # a compressed one, where ``next_offset`` counts uncompressed bytes, about the
    # compressed bytes behind it (null in rows older than schema version 4).
    read_offset: int | None = None

    @property
    def is_complete(self) -> bool:
        return self.status in COMPLETE

    @property
    def updated_epoch(self) -> float:
        """When the row last changed, in seconds (0 for a row never updated)."""
        return self.updated_at.timestamp() if self.updated_at else 0.0

    @property
    def bytes_read(self) -> int:
        """Bytes of the S3 object behind the committed offset."""
        return self.next_offset if self.read_offset is None else self.read_offset

    @property
    def bytes_left(self) -> int:
        """Bytes of the S3 object still to import (0 once complete)."""
        return 0 if self.is_complete else max(self.size_bytes - self.bytes_read, 0)

    @property
    def percent_done(self) -> float:
        """Bytes of the S3 object read as a share of it, 100 once complete (or empty)."""
        if self.is_complete or not self.size_bytes:
            return 100.0
        return min(round(100.0 * self.bytes_read / self.size_bytes, 2), 99.99)

    def rows_in(self, table: str) -> int:
        """The rows this file version committed to ``table`` (one of ``ROW_TABLES``)."""
        return int(getattr(self, ROW_COUNT_COLUMNS[table]))


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Warehouse:
    """The km_* relations and the ledger, on one open database connection."""

    def __init__(self, database: Database, writer: bool = True) -> None:
        self.database = database
        self._names = NameIds()
        self._bytes_since_checkpoint = 0  # of the files this connection committed
        self._gathered: dict[str, list[pa.Table]] = {}  # the open chunk's rows not appended
        self.upgraded_from: int | None = None  # the schema version a writer found
        if writer:
            self.upgraded_from = prepare_for_writing(database)
            database.alias_merge.catch_up(database)
        else:
            check_readable(database)

    def _select_row(self, where: str, params: list[object]) -> LedgerRow | None:
        found = self.database.rows(
            f"SELECT {LEDGER_COLUMNS} FROM km_import_files WHERE {where}", params
        )
        return LedgerRow(*found[0]) if found else None

    def ledger_row(self, source: str, key: str, etag: str) -> LedgerRow | None:
        return self._select_row(
            "source = $1 AND file_key = $2 AND file_etag = $3", [source, key, etag]
        )

    def latest_ledger_row(self, source: str, key: str) -> LedgerRow | None:
        return self._select_row(
            "source = $1 AND file_key = $2 ORDER BY updated_at DESC LIMIT 1", [source, key]
        )

    def current_ledger_rows(
        self, source: str, root_keys: Sequence[str], recent: int
    ) -> tuple[list[LedgerRow], dict[str, int]]:
        """What a status at a glance needs, however long the source's history: the rows of
        keys at the bucket root, the unfinished and imported ones, and the ``recent`` last
        updated; with the count of the rows left out, by status."""
        needed = (*UNFINISHED, State.IMPORTED)
        rows = set(
            self.database.rows(
                f"SELECT {LEDGER_COLUMNS} FROM km_import_files WHERE source = $1 "
                f"AND status IN ({sql_list(needed)}) "
                f"UNION SELECT {LEDGER_COLUMNS} FROM (SELECT {LEDGER_COLUMNS} "
                "FROM km_import_files WHERE source = $1 ORDER BY updated_at DESC LIMIT $2) "
                "AS latest",
                [source, recent],
            )
        )
        keys = list(root_keys)
        for start in range(0, len(keys), _KEYS_PER_QUERY):  # versions sent again, finished
            batch = keys[start : start + _KEYS_PER_QUERY]
            rows.update(
                self.database.rows(
                    f"SELECT {LEDGER_COLUMNS} FROM km_import_files WHERE source = $1 "
                    f"AND file_key IN ({placeholders(len(batch), 2)})",
                    [source, *batch],
                )
            )
        read = sorted(
            (LedgerRow(*row) for row in rows), key=lambda row: (row.file_key, row.updated_epoch)
        )
        left_out = dict(
            self.database.rows(
                "SELECT status, count(*) FROM km_import_files WHERE source = $1 GROUP BY status",
                [source],
            )
        )
        for row in read:
            left_out[row.status] -= 1
        return read, {status: n for status, n in left_out.items() if n}

    def keys_archived_between(
        self, source: str, since: datetime | None, until: datetime
    ) -> list[str]:
        """Keys of ``source`` whose every version is finished for good (archived, or
        retired: superseded or deleted), at least one archived, the last change in
        [``since``, ``until``). A key with a version pending, in progress or failed is
        never among them."""
        finished = sql_list((State.ARCHIVED, *RETIRED))
        window = "AND max(updated_at) >= $3" if since is not None else ""
        found = self.database.rows(
            "SELECT file_key FROM km_import_files WHERE source = $1 GROUP BY file_key "
            f"HAVING bool_and(status IN ({finished})) AND bool_or(status = '{State.ARCHIVED}') "
            f"AND max(updated_at) < $2 {window} ORDER BY file_key",
            [source, until, *([since] if since is not None else [])],
        )
        return [key for (key,) in found]

    def ledger_rows(self, source: str) -> list[LedgerRow]:
        rows = self.database.rows(
            f"SELECT {LEDGER_COLUMNS} FROM km_import_files WHERE source = $1 "
            "ORDER BY file_key, updated_at",
            [source],
        )
        return [LedgerRow(*row) for row in rows]

    def known_names(self) -> KnownNames:
        """Every event and property name any source has loaded (lower-cased)."""
        names = "SELECT DISTINCT name FROM km_names WHERE kind = $1"
        events = self.database.rows(names, ["event"])
        properties = self.database.rows(names, ["property"])
        return KnownNames(
            events=frozenset(row[0] for row in events),
            properties=frozenset(row[0] for row in properties),
        )

    def open_file(self, source: str, key: str, etag: str, size: int) -> LedgerRow:
        """The ledger row of this file version, created as ``pending`` on first sight."""
        found = self.ledger_row(source, key, etag)
        if found is not None:
            return found
        db = self.database

        def add_row() -> None:
            [file_id] = db.next_ids("km_file_ids", 1)
            db.execute(
                f"INSERT INTO {db.ledger_writes.first_rows_table} (source, file_key, file_etag, "
                "size_bytes, status, "
                "next_offset, lines_read, lines_loaded, lines_rejected, lines_blank, updated_at, "
                "file_id) SELECT $1, $2, $3, $4, 'pending', 0, 0, 0, 0, 0, $5, $6 "
                "WHERE NOT EXISTS (SELECT 1 FROM km_import_files WHERE source = $1 "
                f"AND file_key = $2 AND file_etag = $3) {db.sql_skip_duplicates}",
                [source, key, etag, size, utc_now(), file_id],
            )

        transaction(db, add_row)
        row = self.ledger_row(source, key, etag)
        assert row is not None
        return row

    def commit_chunk(
        self,
        row: LedgerRow,
        pieces: Iterable[tuple[PieceRows, PieceEnd]],
        run_id: str,
        first_of_run: bool = False,
    ) -> LedgerRow:
        """Insert a chunk's rows and advance the ledger in one transaction.

        ``pieces`` are the chunk's consecutive pieces in file order: each one's rows
        (``piece_rows``) and where it ends (``PieceEnd``), inserted as they come (an
        iterator may still be splitting the later ones); the ledger moves to the last
        offset and adds the rows of each table. ``first_of_run`` counts one more import
        run; ``run_id`` (the Dagster run's, or a name for the import) is recorded in
        ``km_import_runs`` with the offsets it moved between, in the same transaction. The
        update is conditional on the offset we started from, so a second importer of the
        same file can never commit the same lines twice.
        """
        file_columns = [row.source, row.file_key, row.file_etag]
        db = self.database
        if not row.file_id:
            raise ValueError(f"ledger row of {row.file_key!r} has no file_id; open it first")
        last = PieceEnd(row.next_offset, False, row.bytes_read)
        lines_read = lines_loaded = lines_rejected = lines_blank = 0
        rows: dict[str, int] = dict.fromkeys(ROW_TABLES, 0)
        aliases = []
        self._gathered.clear()
        db.begin()
        try:
            for piece, end in pieces:
                self._insert_rows(piece, row.file_id)
                aliases.append(piece.alias_pairs)
                last = end
                split = piece.split
                lines_read += split.lines_read
                lines_loaded += split.loaded_lines
                lines_rejected += split.rejected_lines
                lines_blank += split.blank_lines
                for relation, count in piece.row_counts.items():
                    rows[relation] += count
            for relation in list(self._gathered):
                self._append_gathered(relation, row.file_id)
            pairs = pl.concat(aliases) if aliases else None
            if pairs is not None:
                with timed("alias groups"):
                    db.alias_merge.in_chunk(db, pairs)
            complete, next_offset = last.last, last.offset
            now = utc_now()
            crash_point("commit_chunk.in_transaction")
            with timed("commit and ledger"):
                updated = db.changed_rows(
                    db.ledger_writes.update(_CHUNK_CHANGES, _CHUNK_ROW),
                    [
                        next_offset,
                        State.IMPORTED if complete else State.IN_PROGRESS,
                        lines_read,
                        lines_loaded,
                        lines_rejected,
                        lines_blank,
                        now,
                        now if complete else None,
                        now,
                        *rows.values(),
                        int(first_of_run),
                        last.read_offset,
                        *file_columns,
                        row.next_offset,
                    ],
                )
                if not updated:
                    raise LedgerConflict(
                        f"s3 object {row.file_key!r} (etag {row.file_etag}) moved past offset "
                        f"{row.next_offset} in another import; this run stops without loading"
                    )
                db.ledger_writes.record_run(
                    db, row.file_id, run_id, row.next_offset, next_offset, now
                )
                committed = self.ledger_row(*file_columns)
                db.commit()
        except BaseException as exc:
            self._gathered.clear()
            rollback_after(db, exc)
            raise
        assert committed is not None
        self._bytes_since_checkpoint += committed.next_offset - row.next_offset
        if pairs is not None and committed.aliases_rows:
            with timed("alias groups"):
                db.alias_merge.after_chunk(db, row.file_id, pairs, committed.lines_read)
        return committed

    def runs_that_advanced(
        self, source: str, key: str, etag: str, run_ids: Sequence[str]
    ) -> set[str]:
        """Those of ``run_ids`` that moved this file version's committed offset forward."""
        if not run_ids:
            return set()
        found = self.database.rows(
            "SELECT r.run_id FROM km_import_runs AS r JOIN km_import_files AS f "
            "ON f.file_id = r.file_id WHERE f.source = $1 AND f.file_key = $2 "
            "AND f.file_etag = $3 AND r.next_offset > r.start_offset "
            f"AND r.run_id IN ({placeholders(len(run_ids), 4)})",
            [source, key, etag, *run_ids],
        )
        return {run_id for (run_id,) in found}

    def lay_out(self, split: SplitLines) -> PieceRows:
        """``split``'s rows as this warehouse appends them. Touches no connection: the
        import calls it in the thread that split the piece, beside the inserts."""
        return piece_rows(split, self.database.arrow_layout)

    def _insert_rows(self, piece: PieceRows, file_id: int) -> None:
        """Gather one piece's rows for the storage tables, names replaced by their ids; a
        table's rows are appended once they pass ``APPEND_BYTES``, and at the chunk's end.

        One append per table every few pieces, not every piece: each costs DuckDB a plan
        and a lake a Parquet file, whatever its rows (most pieces hold a few hundred
        aliases or rejects)."""
        for relation, rows in piece.rows.items():
            if rows.num_rows:
                names = piece.names.get(relation)
                if names is not None:
                    with timed("insert km_names"):
                        ids = self._names.name_ids(self.database, names)
                    rows = rows.append_column("name_id", ids)
                gathered = self._gathered.setdefault(relation, [])
                gathered.append(rows)
                if sum(table.nbytes for table in gathered) >= APPEND_BYTES:
                    self._append_gathered(relation, file_id)

    def _append_gathered(self, relation: str, file_id: int) -> None:
        tables = self._gathered.pop(relation, [])
        if tables:
            file_column = {"file_id": pa.scalar(file_id, type=pa.int32())}
            with timed(f"insert {relation}"):
                rows = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
                self.database.append(STORAGE_TABLES[relation], rows, file_column)

    def checkpoint(self) -> None:
        """Write the committed rows still held in DuckDB's log into the file, once this
        connection has committed ``CHECKPOINT_AFTER_BYTES`` of files since the last time.

        Until a checkpoint those rows hold memory DuckDB cannot spill, so a query over a
        whole file's rows (the data checks) ran out of the 64 MB limit after a 2 GB import
        (32 million property rows); after it the same query needs 4 s and no more memory.
        Closing the warehouse would checkpoint anyway: this only moves the cost earlier.
        Below the threshold (small files, one after another in a catch-up run) the cost
        of a checkpoint each, about 15 ms, would outweigh the memory it frees.
        PostgreSQL needs nothing here.
        """
        if self._bytes_since_checkpoint >= CHECKPOINT_AFTER_BYTES:
            self.database.checkpoint()
            self._bytes_since_checkpoint = 0

    def retire_versions(
        self, source: str, root_etags: Mapping[str, str], after: str | None = None
    ) -> list[LedgerRow]:
        """Mark each unfinished version of ``source`` whose content is no longer at the
        bucket root (``root_etags``: key -> ETag there now) ``superseded`` (another version
        of its key is at the root or was imported after it) or ``deleted``; returns them.
        Their rows leave the documented relations; they never resume. With ``after``, only
        keys sorting after it are looked at (``root_etags`` lists no other)."""
        unfinished = self.database.rows(
            f"SELECT {LEDGER_COLUMNS} FROM km_import_files WHERE source = $1 "
            f"AND status IN ({sql_list(UNFINISHED)})",
            [source],
        )
        retired = []
        for row in (LedgerRow(*found) for found in unfinished):
            # Compared in Python: a database's collation may order keys otherwise.
            if after is not None and row.file_key <= after:
                continue
            if root_etags.get(row.file_key) == row.file_etag:
                continue
            latest = self.latest_ledger_row(source, row.file_key)
            replaced = row.file_key in root_etags or (
                latest is not None and latest.file_etag != row.file_etag
            )
            status = State.SUPERSEDED if replaced else State.DELETED
            retired.append(self._update_status(row, status, error=row.error))
        return retired

    def mark_archived(self, row: LedgerRow, archived_key: str) -> LedgerRow:
        return self._update_status(row, State.ARCHIVED, archived_key=archived_key)

    def mark_failed(self, row: LedgerRow, error: str) -> LedgerRow:
        return self._update_status(row, State.FAILED, error=error)

    def _update_status(
        self,
        row: LedgerRow,
        status: str,
        archived_key: str | None = None,
        error: str | None = None,
    ) -> LedgerRow:
        self.database.execute(
            self.database.ledger_writes.update(
                _STATUS_CHANGES, "source = $5 AND file_key = $6 AND file_etag = $7"
            ),
            [status, archived_key, error, utc_now(), row.source, row.file_key, row.file_etag],
        )
        updated = self.ledger_row(row.source, row.file_key, row.file_etag)
        assert updated is not None
        return updated


class DuckDBWarehouse(Warehouse):
    """The warehouse in an embedded DuckDB file, by path."""

    database: DuckDBDatabase

    @classmethod
    @contextmanager
    def connect(
        cls, path: str | Path, lock_wait_seconds: float = LOCK_WAIT_SECONDS
    ) -> Iterator[DuckDBWarehouse]:
        """Open the DuckDB file for writing, creating it and its tables if needed."""
        with DuckDBDatabase.open(path, False, lock_wait_seconds) as database:
            yield cls(database)

    @classmethod
    @contextmanager
    def reader(
        cls, path: str | Path, lock_wait_seconds: float = 10.0
    ) -> Iterator[DuckDBWarehouse | None]:
        """Open an existing DuckDB file read-only; None when it has no tables yet (no file,
        an empty one, or one whose first writer was killed before its schema committed)."""
        if not Path(path).exists() or is_empty_file(Path(path)):
            yield None
            return
        with DuckDBDatabase.open(path, True, lock_wait_seconds) as database:
            yield cls(database, writer=False) if has_schema(database) else None
