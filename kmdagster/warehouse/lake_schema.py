"""The lake's layout of the schema: the same relations, with what a DuckLake needs instead
of keys, sequences and updates.

On a lake, a commit that deletes from a table conflicts with any other writer's that
inserts into it, so an UPDATE of one source's ledger row would fail another source's
chunk. There the ledger and the run ledger are appended to, never updated: each change
of a file version is a new revision, each chunk a row, and ``km_import_files`` and
``km_import_runs`` are views with the same columns (``ledger_writes.APPENDED_REVISIONS``
writes them). A lake has no sequences: a counter row per sequence
(``DuckLakeDatabase.next_ids``). Alias groups are merged after the chunk commits, in a
transaction of their own (``people.MERGED_APART``): a row per merge in ``km_alias_merges``
says how far into the file version its pairs are in the groups.
"""

from __future__ import annotations

from kmdagster.warehouse.database import LEDGER_TABLE, Database, SchemaLayout
from kmdagster.warehouse.ledger_writes import REVISIONS
from kmdagster.warehouse.schema import (
    STORAGE_TABLE_NAMES,
    TABLES,
    VIEWS,
    create_tables,
    run_script,
)

_SEQUENCES = """
CREATE TABLE IF NOT EXISTS km_sequences (name VARCHAR NOT NULL, last_value BIGINT NOT NULL);
INSERT INTO km_sequences VALUES ('km_file_ids', 0), ('km_name_ids', 0);
"""
_ALIAS_MERGES = "km_alias_merges"
_TABLES = {
    REVISIONS: (TABLES[LEDGER_TABLE][0] + ",\n    revision BIGINT NOT NULL DEFAULT 1", ""),
    "km_import_run_chunks": (TABLES["km_import_runs"][0], ""),
    _ALIAS_MERGES: ("file_id INTEGER NOT NULL, through_line BIGINT NOT NULL", ""),
    **TABLES,
}
_LEDGER_VIEWS = f"""
CREATE OR REPLACE VIEW km_import_files AS
SELECT * EXCLUDE (revision, k) FROM (
    SELECT *, row_number() OVER (
        PARTITION BY source, file_key, file_etag ORDER BY revision DESC) AS k
    FROM {REVISIONS}
) AS revised WHERE k = 1;
CREATE OR REPLACE VIEW km_import_runs AS
SELECT file_id, run_id, min(start_offset) AS start_offset, max(next_offset) AS next_offset,
    count(*) AS chunks, max(updated_at) AS updated_at
FROM km_import_run_chunks GROUP BY file_id, run_id;
"""


def _add_alias_merges(database: Database) -> None:
    """Version 5: a lake's groups were merged in each chunk's own transaction until then,
    so every committed line's pairs are in them. (A lake was never older than version 4.)"""
    run_script(database, create_tables((_ALIAS_MERGES,), _TABLES, keyed=False))
    database.execute(
        f"INSERT INTO {_ALIAS_MERGES} SELECT file_id, lines_read FROM km_import_files "
        "WHERE file_id IS NOT NULL AND aliases_rows > 0"
    )


LAKE_LAYOUT = SchemaLayout(
    new_schema=_SEQUENCES
    + create_tables(
        (REVISIONS, "km_import_run_chunks", _ALIAS_MERGES, *STORAGE_TABLE_NAMES),
        _TABLES,
        keyed=False,
    )
    + _LEDGER_VIEWS
    + VIEWS,
    ledger_table=REVISIONS,
    after_ledger_altered=_LEDGER_VIEWS,
    to_version_5=_add_alias_merges,
)
