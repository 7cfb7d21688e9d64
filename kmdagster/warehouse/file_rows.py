"""What one file version put in the warehouse: row counts, duplicates, top names, rejects.

Read-only queries for the import's metadata, its data checks and the rejects file, the
same on every backend. Every query is filtered to one ``file_id``: the storage tables are
appended file by file, so DuckDB's zone maps skip the other files' row groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from weakref import WeakKeyDictionary

import polars as pl

from kmdagster.warehouse.database import Database
from kmdagster.warehouse.schema import ROW_TABLES, STORAGE_TABLES
from kmdagster.warehouse.warehouse import LedgerRow

# The columns that identify one row of a file version in each table: one row per line,
# except properties, one per (line, name) since a line's names are unique once normalised.
ROW_IDENTITY = {
    "km_events": "line_no",
    "km_properties": "line_no, name",
    "km_aliases": "line_no",
    "km_rejects": "line_no",
}
# The same identity in the storage tables, which hold a name's id: a line's names being
# unique, so are its name ids, and grouping ids needs far less memory than the view's names.
_STORAGE_ROW_IDENTITY = {**ROW_IDENTITY, "km_properties": "line_no, name_id"}
_OF_FILE = "file_id = $1"  # the first parameter of every query here


def _file(row: LedgerRow) -> list[object]:
    return [row.file_id]


def _count(database: Database, sql: str, params: list[object]) -> int:
    [(found,)] = database.rows(sql, params)
    return int(found or 0)


def rows_by_table(database: Database, row: LedgerRow) -> dict[str, int]:
    """The rows each table holds for this file version, counted in the warehouse (one
    query: a catch-up run asks this of every small file it imports)."""
    counts = " UNION ALL ".join(
        f"SELECT '{table}', count(*) FROM {table} WHERE {_OF_FILE}" for table in ROW_TABLES
    )
    counted = {table: int(found or 0) for table, found in database.rows(counts, _file(row))}
    return {table: counted[table] for table in ROW_TABLES}


def duplicate_rows(database: Database, row: LedgerRow, table: str) -> int:
    """Rows of this file version in ``table`` beyond the first with the same identity.

    A grouping (which DuckDB spills to disk past its memory limit), not a count of
    distinct tuples (which it must hold in memory).
    """
    return _count(
        database,
        f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {STORAGE_TABLES[table]} "
        f"WHERE {_OF_FILE} GROUP BY {_STORAGE_ROW_IDENTITY[table]} HAVING count(*) > 1) "
        "AS repeated",
        _file(row),
    )


def _spellings(column: str) -> str:
    """Every label of a name in one text (``Signed Up, signed up``): the same SQL on
    DuckDB and PostgreSQL."""
    return f"string_agg(DISTINCT {column}, ', ' ORDER BY {column})"


def top_events(database: Database, row: LedgerRow, limit: int = 10) -> pl.DataFrame:
    """The file's most frequent events: name, every spelling it was sent under, rows, people
    (estimated on DuckDB, where memory then stays constant whatever the file's size)."""
    return database.frame(
        f"SELECT event, {_spellings('event_label')} AS label, count(*) AS rows, "
        f"{database.sql_distinct_estimate('person')} AS people FROM km_events "
        f"WHERE {_OF_FILE} GROUP BY event ORDER BY rows DESC, event LIMIT $2",
        [*_file(row), limit],
    )


def top_properties(database: Database, row: LedgerRow, limit: int = 10) -> pl.DataFrame:
    """The file's most frequent property names: name, every spelling it was sent under,
    rows, people (estimated), numeric rows."""
    return database.frame(
        f"SELECT name, {_spellings('name_label')} AS label, count(*) AS rows, "
        f"{database.sql_distinct_estimate('person')} AS people, "
        f"count(value_number) AS numeric_rows FROM km_properties WHERE {_OF_FILE} "
        "GROUP BY name ORDER BY rows DESC, name LIMIT $2",
        [*_file(row), limit],
    )


def reject_reasons(
    database: Database, row: LedgerRow, examples: int = 3, example_chars: int = 120
) -> pl.DataFrame:
    """Rejected lines per reason, most frequent first, with the first few of each.

    Only line numbers are ranked and only the first lines' text is read, so memory does
    not grow with the number or the length of the rejected lines.
    """
    reasons = database.frame(
        "SELECT reason, count(*) AS lines, "
        "array_agg(line_no ORDER BY line_no) FILTER (WHERE k <= $2) AS first_lines "
        "FROM (SELECT reason, line_no, "
        "row_number() OVER (PARTITION BY reason ORDER BY line_no) AS k "
        f"FROM km_reject_rows WHERE {_OF_FILE}) AS ranked "
        "GROUP BY reason ORDER BY lines DESC, reason",
        [*_file(row), examples],
    )
    first_lines = reasons.get_column("first_lines").explode().to_frame("line_no")
    with database.temporary("km_first_lines", first_lines):
        texts = database.frame(
            "SELECT r.line_no, left(r.raw_line, CAST($2 AS INTEGER)) AS example "
            "FROM km_reject_rows AS r "
            f"JOIN km_first_lines AS l ON l.line_no = r.line_no WHERE r.{_OF_FILE}",
            [*_file(row), example_chars],
        )
    example_of = dict(texts.iter_rows())
    return reasons.with_columns(
        examples=pl.Series(
            [[example_of[n] for n in lines] for lines in reasons.get_column("first_lines")],
            dtype=pl.List(pl.String),
        )
    )


def table_columns(database: Database, table: str) -> list[tuple[str, str]]:
    """(name, type) of each column of ``table``, in order; read once per connection (a
    writer's schema is current from the moment it opens)."""
    known = _COLUMNS.setdefault(database, {})
    if table not in known:
        known[table] = [
            (name, data_type)
            for name, data_type in database.rows(
                "SELECT column_name, data_type FROM information_schema.columns WHERE "
                "table_name = $1 AND table_schema = current_schema() ORDER BY ordinal_position",
                [table],
            )
        ]
    return known[table]


_COLUMNS: WeakKeyDictionary[Database, dict[str, list[tuple[str, str]]]] = WeakKeyDictionary()


def reject_batches(
    database: Database, row: LedgerRow, batch_rows: int = 50_000
) -> Iterator[pl.DataFrame]:
    """The file version's rejects in line order, at most ``batch_rows`` at a time (bounded
    memory), each batch those of the next ``batch_rows`` line numbers.

    One query sorting every reject of the file would hold its whole sorted result (DuckDB
    keeps it in memory outside its limit: 6 GB for a 1 GB file of invalid lines), and one
    per batch ranked over all the lines after the last one read costs the square of the
    batches; a range of line numbers reads only the row groups it can be in (a file's rows
    are appended in line order).
    """
    for first in range(0, row.lines_read, batch_rows):
        batch = database.frame(
            "SELECT line_no, byte_offset, reason, error_position, raw_line, raw_chars "
            f"FROM km_rejects WHERE {_OF_FILE} AND line_no > $2 AND line_no <= $3 "
            "ORDER BY line_no",
            [*_file(row), first, first + batch_rows],
        )
        if batch.height:
            yield batch
