"""The ledger's writes as SQL: updated in place, or appended to as revisions (a lake).

On a lake a commit that deletes from a table conflicts with any other writer's that
inserts into it, so an UPDATE there (a delete and an insert) of one source's ledger row
would fail a chunk of another source. There each change of a file version is a new
revision of its row in ``km_import_file_revisions``, and ``km_import_files`` is the view
of the latest ones (``schema.py``). The same change is written either way from one
description: the columns it sets (SQL expressions over the row as it was) and which row.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmdagster.warehouse.database import Database

LEDGER_COLUMNS = (
    "source, file_key, file_etag, size_bytes, status, next_offset, lines_read, lines_loaded, "
    "lines_rejected, lines_blank, started_at, completed_at, archived_key, error, updated_at, "
    "events_rows, properties_rows, aliases_rows, rejects_rows, import_runs, file_id, read_offset"
)
REVISIONS = "km_import_file_revisions"


class UpdatedInPlace:
    first_rows_table = "km_import_files"

    def update(self, changes: Mapping[str, str], where: str) -> str:
        assignments = ", ".join(f"{column} = {value}" for column, value in changes.items())
        return f"UPDATE km_import_files SET {assignments} WHERE {where}"

    def record_run(
        self, database: Database, file_id: int, run_id: str, start: int, end: int, now: datetime
    ) -> None:
        """The run's row moved on by each chunk it commits (the run's own transactions:
        nothing else writes its row)."""
        moved = database.changed_rows(
            "UPDATE km_import_runs SET next_offset = $1, chunks = chunks + 1, updated_at = $2 "
            "WHERE file_id = $3 AND run_id = $4",
            [end, now, file_id, run_id],
        )
        if not moved:
            database.execute(
                "INSERT INTO km_import_runs (file_id, run_id, start_offset, next_offset, chunks, "
                "updated_at) VALUES ($1, $2, $3, $4, 1, $5)",
                [file_id, run_id, start, end, now],
            )


class AppendedRevisions:
    first_rows_table = REVISIONS  # revision 1 by the column's default

    def update(self, changes: Mapping[str, str], where: str) -> str:
        values = ", ".join(changes.get(column, column) for column in LEDGER_COLUMNS.split(", "))
        return (
            f"INSERT INTO {REVISIONS} ({LEDGER_COLUMNS}, revision) SELECT {values}, "
            f"revision + 1 FROM {REVISIONS} AS r WHERE ({where}) AND revision = (SELECT "
            f"max(revision) FROM {REVISIONS} WHERE source = r.source AND file_key = r.file_key "
            "AND file_etag = r.file_etag)"
        )

    def record_run(
        self, database: Database, file_id: int, run_id: str, start: int, end: int, now: datetime
    ) -> None:
        """A row per chunk, which the ``km_import_runs`` view sums up per run."""
        database.execute(
            "INSERT INTO km_import_run_chunks (file_id, run_id, start_offset, next_offset, "
            "chunks, updated_at) VALUES ($1, $2, $3, $4, 1, $5)",
            [file_id, run_id, start, end, now],
        )


UPDATED_IN_PLACE = UpdatedInPlace()
APPENDED_REVISIONS = AppendedRevisions()
