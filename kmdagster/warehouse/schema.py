"""The warehouse schema: compact storage behind the documented relations, and its upgrades.

Storage: rows point at their file by ``file_id`` (from the ledger) and at their event or
property name by ``name_id`` (``km_names``, one row per label as sent), so the constant
file columns and the repeated names are stored once. The documented relations
``km_events``, ``km_properties``, ``km_aliases`` and ``km_rejects`` are views over it
with the documented columns (plus ``file_id``); ``km_import_files`` is the ledger table.
KISSmetrics' own counting is served by views too: ``km_events_dedup`` (one event per
person, name and second: the first line that sent it), ``km_properties_dedup`` (one value
per person, property and second: the last line that sent it) and ``km_people`` (every
identity with its group's person id, from ``km_identity_groups``). ``km_import_runs``
records, per file version, each run that committed a chunk and the offsets it moved
between. Rows of versions whose content left S3 before they finished (``superseded``,
``deleted``) are in none of the documented relations but in ``km_events_replaced``,
``km_properties_replaced``, ``km_aliases_replaced`` and ``km_rejects_replaced``.

``km_schema`` records the version. A writer upgrades an older warehouse in one
transaction, rows kept; a reader refuses it, naming the command that upgrades it; any
warehouse newer than this code is refused, never misread.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

import duckdb

from kmdagster.file_state import RETIRED
from kmdagster.km_format.split import MAX_RAW_LINE_CHARS
from kmdagster.seams import crash_point
from kmdagster.warehouse.database import (
    LEDGER_TABLE,
    Database,
    SchemaLayout,
    WarehouseSchemaError,
    sql_list,
    transaction,
)
from kmdagster.warehouse.people import add_alias_pairs

SCHEMA_VERSION = 5
UPGRADE_COMMAND = "kmdagster upgrade-warehouse"

_SEQUENCES = """
CREATE SEQUENCE IF NOT EXISTS km_file_ids START 1;
CREATE SEQUENCE IF NOT EXISTS km_name_ids START 1;
"""

# Where a rejected line is (null for lines rejected before version 4 recorded it).
_REJECT_LOCATION = {"byte_offset": "BIGINT", "error_position": "BIGINT"}
_REJECT_LOCATION_COLUMNS = ", ".join(f"{name} {kind}" for name, kind in _REJECT_LOCATION.items())

# table -> (its columns, its keys). A lake has no keys: the code never relies on one to
# reject a row, only to skip a duplicate insert that a lake's transactions rule out.
TABLES = {
    # file_id: from the km_file_ids sequence, unique; what the file's rows point at.
    "km_import_files": (
        """source VARCHAR NOT NULL, file_key VARCHAR NOT NULL, file_etag VARCHAR NOT NULL,
    size_bytes BIGINT NOT NULL, status VARCHAR NOT NULL, next_offset BIGINT NOT NULL,
    lines_read BIGINT NOT NULL, lines_loaded BIGINT NOT NULL, lines_rejected BIGINT NOT NULL,
    lines_blank BIGINT NOT NULL, started_at TIMESTAMPTZ, completed_at TIMESTAMPTZ,
    archived_key VARCHAR, error VARCHAR, updated_at TIMESTAMPTZ NOT NULL,
    events_rows BIGINT DEFAULT 0, properties_rows BIGINT DEFAULT 0,
    aliases_rows BIGINT DEFAULT 0, rejects_rows BIGINT DEFAULT 0, import_runs BIGINT DEFAULT 0,
    file_id INTEGER, read_offset BIGINT""",
        "PRIMARY KEY (source, file_key, file_etag)",
    ),
    # Which runs moved each file version's committed offset, written in the chunk's own
    # transaction: the quarantine rule counts only failed runs that advanced nothing, and
    # a kill at any instant cannot make a run that committed look like one that did not.
    "km_import_runs": (
        """file_id INTEGER NOT NULL, run_id VARCHAR NOT NULL, start_offset BIGINT NOT NULL,
    next_offset BIGINT NOT NULL, chunks BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL""",
        "PRIMARY KEY (file_id, run_id)",
    ),
    "km_names": (
        "name_id INTEGER NOT NULL, kind VARCHAR NOT NULL, name VARCHAR NOT NULL, "
        "label VARCHAR NOT NULL",
        "PRIMARY KEY (name_id), UNIQUE (kind, label)",
    ),
    "km_event_rows": (
        """file_id INTEGER NOT NULL, line_no BIGINT NOT NULL, person VARCHAR NOT NULL,
    name_id INTEGER NOT NULL, ts TIMESTAMPTZ NOT NULL""",
        "",
    ),
    "km_property_rows": (
        """file_id INTEGER NOT NULL, line_no BIGINT NOT NULL, person VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL, name_id INTEGER NOT NULL, value VARCHAR NOT NULL,
    value_number DOUBLE PRECISION""",
        "",
    ),
    "km_alias_rows": (
        """file_id INTEGER NOT NULL, line_no BIGINT NOT NULL, person VARCHAR NOT NULL,
    alias VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL""",
        "",
    ),
    "km_reject_rows": (
        """file_id INTEGER NOT NULL, line_no BIGINT NOT NULL, reason VARCHAR NOT NULL,
    raw_line VARCHAR NOT NULL, raw_chars BIGINT NOT NULL, """
        + _REJECT_LOCATION_COLUMNS,
        "",
    ),
    "km_identity_groups": ("identity VARCHAR NOT NULL, person_id VARCHAR NOT NULL", ""),
    "km_schema": ("version INTEGER NOT NULL, written_at TIMESTAMPTZ NOT NULL", ""),
}
_RUN_TABLES = ("km_import_runs",)
STORAGE_TABLE_NAMES = tuple(name for name in TABLES if name not in (LEDGER_TABLE, *_RUN_TABLES))


def create_tables(
    names: tuple[str, ...], tables: Mapping[str, tuple[str, str]] = TABLES, keyed: bool = True
) -> str:
    statements = []
    for name in names:
        columns, keys = tables[name]
        with_keys = f",\n    {keys}" if keys and keyed else ""
        statements.append(f"CREATE TABLE IF NOT EXISTS {name} (\n    {columns}{with_keys}\n);\n")
    return "".join(statements)


_LEDGER = create_tables((LEDGER_TABLE,))
_RUNS = create_tables(_RUN_TABLES)
_STORAGE = create_tables(STORAGE_TABLE_NAMES)

_FILE = "JOIN km_import_files AS f ON f.file_id = r.file_id"
# The storage table behind each documented relation.
STORAGE_TABLES = {
    "km_events": "km_event_rows",
    "km_properties": "km_property_rows",
    "km_aliases": "km_alias_rows",
    "km_rejects": "km_reject_rows",
}

_EVENT_COLUMNS = "source, file_key, file_etag, line_no, person, event, event_label, ts, file_id"
_PROPERTY_COLUMNS = (
    "source, file_key, file_etag, line_no, person, ts, name, name_label, value, value_number, "
    "file_id"
)
# Versions whose content left S3 before they finished: their rows stay, out of the
# documented relations, in ``<relation>_replaced`` for audit.
_RETIRED = sql_list(RETIRED)
_ROW_VIEWS = {
    "km_events": "n.name AS event, n.label AS event_label, r.ts",
    "km_properties": "r.ts, n.name, n.label AS name_label, r.value, r.value_number",
    "km_aliases": "r.alias, r.ts",
    "km_rejects": "r.reason, r.raw_line, r.raw_chars, r.byte_offset, r.error_position",
}


def _row_views() -> str:
    views = []
    for relation, columns in _ROW_VIEWS.items():
        named = " JOIN km_names AS n ON n.name_id = r.name_id" if "n.name" in columns else ""
        person = "r.person, " if relation != "km_rejects" else ""
        for name, keep in ((relation, "NOT IN"), (f"{relation}_replaced", "IN")):
            views.append(
                f"CREATE OR REPLACE VIEW {name} AS\n"
                f"SELECT f.source, f.file_key, f.file_etag, r.line_no, {person}{columns}, "
                f"r.file_id\nFROM {STORAGE_TABLES[relation]} AS r {_FILE}{named}\n"
                f"WHERE f.status {keep} ({_RETIRED});\n"
            )
    return "".join(views)


VIEWS = (
    _row_views()
    + f"""
CREATE OR REPLACE VIEW km_events_dedup AS
SELECT {_EVENT_COLUMNS} FROM (
    SELECT *, row_number() OVER (PARTITION BY person, event, ts ORDER BY file_id, line_no) AS k
    FROM km_events
) AS ranked WHERE k = 1;
CREATE OR REPLACE VIEW km_properties_dedup AS
SELECT {_PROPERTY_COLUMNS} FROM (
    SELECT *, row_number() OVER (
        PARTITION BY person, name, ts ORDER BY file_id DESC, line_no DESC) AS k
    FROM km_properties
) AS ranked WHERE k = 1;
CREATE OR REPLACE VIEW km_people AS
WITH seen AS (
    SELECT person AS identity FROM km_event_rows
    UNION SELECT person FROM km_property_rows
    UNION SELECT person FROM km_alias_rows
    UNION SELECT alias FROM km_alias_rows
)
SELECT s.identity, coalesce(g.person_id, s.identity) AS person_id
FROM seen AS s LEFT JOIN km_identity_groups AS g ON g.identity = s.identity;
"""
)

# Every view of VIEWS, those reading another view first.
_VIEW_NAMES = (
    "km_events_dedup",
    "km_properties_dedup",
    "km_people",
    *(f"{relation}{kind}" for relation in _ROW_VIEWS for kind in ("", "_replaced")),
)

# PostgreSQL reads one file's rows (the import's checks and metadata) through an index;
# DuckDB skips other files' row groups by their min/max without one. BRIN: file ids grow
# with the append order, so a block range index is small and costs the load next to
# nothing. Identity groups are looked up by identity and by person id.
_POSTGRES_INDEXES = """
CREATE INDEX IF NOT EXISTS km_event_rows_file ON km_event_rows USING brin (file_id);
CREATE INDEX IF NOT EXISTS km_property_rows_file ON km_property_rows USING brin (file_id);
CREATE INDEX IF NOT EXISTS km_alias_rows_file ON km_alias_rows USING brin (file_id);
CREATE INDEX IF NOT EXISTS km_reject_rows_file ON km_reject_rows USING brin (file_id);
CREATE INDEX IF NOT EXISTS km_identity_groups_identity ON km_identity_groups (identity);
CREATE INDEX IF NOT EXISTS km_identity_groups_person ON km_identity_groups (person_id);
"""

# The ledger column counting each file's rows in each relation.
ROW_TABLES = tuple(STORAGE_TABLES)
ROW_COUNT_COLUMNS = {table: f"{table.removeprefix('km_')}_rows" for table in ROW_TABLES}


# Keyed tables and sequences: the DuckDB file, and PostgreSQL with its indexes.
KEYED_LAYOUT = SchemaLayout(new_schema=_SEQUENCES + _LEDGER + _RUNS + _STORAGE + VIEWS)
POSTGRES_LAYOUT = SchemaLayout(new_schema=KEYED_LAYOUT.new_schema + _POSTGRES_INDEXES)

__all__ = ["WarehouseSchemaError"]


def run_script(database: Database, script: str) -> None:
    """Each statement of ``script`` in turn: PostgreSQL's driver prepares what it is given,
    one statement at a time. DuckDB's parser splits the script (it reads PostgreSQL's
    grammar, so quotes and comments never cut a statement in two)."""
    for statement in duckdb.extract_statements(script):
        database.execute(statement.query)


def _has_table(database: Database, name: str) -> bool:
    [(found,)] = database.rows(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = $1 "
        "AND table_schema = current_schema() AND table_catalog = current_database()",
        [name],
    )
    return bool(found)


def schema_version(database: Database) -> int | None:
    """The warehouse's version; 1 for a warehouse written before versions were recorded,
    None for an empty database."""
    if _has_table(database, "km_schema"):
        [(found,)] = database.rows("SELECT max(version) FROM km_schema")
        return int(found) if found is not None else None
    return 1 if _has_table(database, "km_import_files") else None


def has_schema(database: Database) -> bool:
    return schema_version(database) is not None


def _too_new(location: str, version: int) -> WarehouseSchemaError:
    return WarehouseSchemaError(
        f"the warehouse {location} has schema version {version}, written by a newer "
        f"kmdagster; this one reads version {SCHEMA_VERSION}. Upgrade kmdagster to use it"
    )


def check_readable(database: Database) -> None:
    """Refuse, with the fix, a warehouse a read-only connection cannot read as is."""
    version = schema_version(database)
    if version is None or version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise _too_new(database.location, version)
    raise WarehouseSchemaError(
        f"the warehouse {database.location} has schema version {version}; this kmdagster "
        f"reads version {SCHEMA_VERSION}. Run `{UPGRADE_COMMAND}` (or let the next import run "
        "upgrade it)"
    )


def prepare_for_writing(database: Database) -> int | None:
    """Create the schema, or upgrade an older one in one transaction; returns the version
    found (None for a new warehouse)."""
    version = schema_version(database)
    if version == SCHEMA_VERSION:
        return version
    # Two sources' first runs may start together on an empty PostgreSQL database or lake:
    # PostgreSQL takes turns (``serialize``); on a lake the second commit conflicts and is
    # tried again, finding the schema made.
    return transaction(database, lambda: _create_or_upgrade(database))


def _create_or_upgrade(database: Database) -> int | None:
    database.serialize("schema")
    version = schema_version(database)
    if version == SCHEMA_VERSION:
        return version
    if version is not None and version > SCHEMA_VERSION:
        raise _too_new(database.location, version)
    layout = database.schema_layout
    if version is None:
        run_script(database, layout.new_schema)
    else:
        if version == 1:
            _upgrade_from_v1(database)  # with version 4's columns
        elif version < 4:  # rejects located in their file; bytes read of each file
            _add_v4_columns(database, layout)
        if version < 3:  # the run ledger; relations that leave replaced versions out
            run_script(database, _RUNS)
        if version < 4:
            run_script(database, VIEWS)
        if version < 5 and layout.to_version_5 is not None:
            layout.to_version_5(database)
    crash_point("schema.in_transaction")
    database.execute("DELETE FROM km_schema")
    database.execute(
        "INSERT INTO km_schema VALUES ($1, $2)", [SCHEMA_VERSION, datetime.now(timezone.utc)]
    )
    return version


def _add_v4_columns(database: Database, layout: SchemaLayout) -> None:
    # Views over a table must go first: DuckDB refuses to alter a table a view reads. The
    # upgrade makes them all again.
    for view in _VIEW_NAMES:
        database.execute(f"DROP VIEW IF EXISTS {view}")
    for table, columns in (
        ("km_reject_rows", _REJECT_LOCATION),
        (layout.ledger_table, {"read_offset": "BIGINT"}),
    ):
        for name, kind in columns.items():
            database.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {kind}")
    run_script(database, layout.after_ledger_altered)


def _upgrade_from_v1(con: Database) -> None:
    """Version 1 kept every column in every row (wide tables km_events, ...): move the rows
    into the compact storage, count each file's rows, and put the views in their place."""
    run_script(con, _SEQUENCES)
    for column in ROW_COUNT_COLUMNS.values():
        con.execute(f"ALTER TABLE km_import_files ADD COLUMN {column} BIGINT DEFAULT 0")
    con.execute("ALTER TABLE km_import_files ADD COLUMN import_runs BIGINT DEFAULT 0")
    con.execute("ALTER TABLE km_import_files ADD COLUMN file_id INTEGER")
    con.execute("ALTER TABLE km_import_files ADD COLUMN read_offset BIGINT")
    con.execute("UPDATE km_import_files SET file_id = nextval('km_file_ids')")
    run_script(con, _STORAGE)
    for kind, name, label, table in (
        ("event", "event", "event_label", "km_events"),
        ("property", "name", "name_label", "km_properties"),
    ):
        con.execute(
            "INSERT INTO km_names SELECT nextval('km_name_ids'), $1, name, label FROM "
            f"(SELECT DISTINCT {name} AS name, {label} AS label FROM {table} ORDER BY label)",
            [kind],
        )
    of_file = (
        "JOIN km_import_files AS f ON f.source = v.source AND f.file_key = v.file_key "
        "AND f.file_etag = v.file_etag"
    )
    con.execute(
        "INSERT INTO km_event_rows SELECT f.file_id, v.line_no, v.person, n.name_id, v.ts "
        f"FROM km_events AS v {of_file} "
        "JOIN km_names AS n ON n.kind = 'event' AND n.label = v.event_label "
        "ORDER BY f.file_id, v.line_no"
    )
    con.execute(
        "INSERT INTO km_property_rows SELECT f.file_id, v.line_no, v.person, v.ts, n.name_id, "
        f"v.value, v.value_number FROM km_properties AS v {of_file} "
        "JOIN km_names AS n ON n.kind = 'property' AND n.label = v.name_label "
        "ORDER BY f.file_id, v.line_no"
    )
    con.execute(
        "INSERT INTO km_alias_rows SELECT f.file_id, v.line_no, v.person, v.alias, v.ts "
        f"FROM km_aliases AS v {of_file} ORDER BY f.file_id, v.line_no"
    )
    add_alias_pairs(con, con.frame("SELECT person, alias FROM km_alias_rows"))
    # Version 1 kept up to 16 KB of a rejected line and not its length: what it kept is
    # cut to today's length and that is the length recorded.
    con.execute(
        "INSERT INTO km_reject_rows (file_id, line_no, reason, raw_line, raw_chars) "
        "SELECT f.file_id, v.line_no, v.reason, "
        f"left(v.raw_line, {MAX_RAW_LINE_CHARS}), length(v.raw_line) "
        f"FROM km_rejects AS v {of_file} ORDER BY f.file_id, v.line_no"
    )
    for view, table in STORAGE_TABLES.items():
        con.execute(f"DROP TABLE {view}")
        column = ROW_COUNT_COLUMNS[view]
        con.execute(
            f"UPDATE km_import_files AS f SET {column} = c.n FROM (SELECT file_id, count(*) AS n "
            f"FROM {table} GROUP BY file_id) AS c WHERE f.file_id = c.file_id"
        )
    run_script(con, VIEWS)
