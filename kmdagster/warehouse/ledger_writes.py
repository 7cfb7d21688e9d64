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

LEDGER_COLUMNS = (
    "source, file_key, file_etag, size_bytes, status, next_offset, lines_read, lines_loaded, "
    "lines_rejected, lines_blank, started_at, completed_at, archived_key, error, updated_at, "
    "events_rows, properties_rows, aliases_rows, rejects_rows, import_runs, file_id, read_offset"
)
REVISIONS = "km_import_file_revisions"


def ledger_table(appends: bool) -> str:
    """Where a new file version's first row goes (revision 1 by the column's default)."""
    return REVISIONS if appends else "km_import_files"


def ledger_update(appends: bool, changes: Mapping[str, str], where: str) -> str:
    """The statement that sets ``changes`` (column -> expression) on the ledger rows
    ``where`` selects; either way it reports the rows it changed."""
    if not appends:
        assignments = ", ".join(f"{column} = {value}" for column, value in changes.items())
        return f"UPDATE km_import_files SET {assignments} WHERE {where}"
    values = ", ".join(changes.get(column, column) for column in LEDGER_COLUMNS.split(", "))
    return (
        f"INSERT INTO {REVISIONS} ({LEDGER_COLUMNS}, revision) SELECT {values}, revision + 1 "
        f"FROM {REVISIONS} AS r WHERE ({where}) AND revision = (SELECT max(revision) "
        f"FROM {REVISIONS} WHERE source = r.source AND file_key = r.file_key "
        "AND file_etag = r.file_etag)"
    )
