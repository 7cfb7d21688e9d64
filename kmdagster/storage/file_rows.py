"""What one file version put in the warehouse: row counts, duplicates, top names, rejects.

Read-only queries for the import's metadata, its data checks and the rejects file. Every
query is filtered to one ``file_id``: the storage tables are appended file by file, so
DuckDB's zone maps skip the other files' row groups.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import polars as pl

from kmdagster.storage.schema import ROW_TABLES, STORAGE_TABLES
from kmdagster.storage.warehouse import LedgerRow

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
_OF_FILE = "file_id = ?"


def _file(row: LedgerRow) -> list[object]:
    return [row.file_id]


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> int:
    [(found,)] = con.execute(sql, params).fetchall()  # fetched whole: the connection is free
    return int(found or 0)


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> pl.DataFrame:
    return con.sql(sql, params=params).pl()


def rows_by_table(con: duckdb.DuckDBPyConnection, row: LedgerRow) -> dict[str, int]:
    """The rows each table holds for this file version, counted in the warehouse."""
    return {
        table: _count(con, f"SELECT count(*) FROM {table} WHERE {_OF_FILE}", _file(row))
        for table in ROW_TABLES
    }


def duplicate_rows(con: duckdb.DuckDBPyConnection, row: LedgerRow, table: str) -> int:
    """Rows of this file version in ``table`` beyond the first with the same identity.

    A grouping (which DuckDB spills to disk past its memory limit), not a count of
    distinct tuples (which it must hold in memory).
    """
    return _count(
        con,
        f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {STORAGE_TABLES[table]} "
        f"WHERE {_OF_FILE} GROUP BY {_STORAGE_ROW_IDENTITY[table]} HAVING count(*) > 1)",
        _file(row),
    )


# Distinct people are estimated (HyperLogLog, within a few percent): memory stays constant
# whatever the file's size.
def top_events(con: duckdb.DuckDBPyConnection, row: LedgerRow, limit: int = 10) -> pl.DataFrame:
    """The file's most frequent events: name, the label sent most, rows, people (estimated)."""
    return _frame(
        con,
        "SELECT event, mode(event_label) AS label, count(*) AS rows, "
        f"approx_count_distinct(person) AS people FROM km_events WHERE {_OF_FILE} "
        "GROUP BY event ORDER BY rows DESC, event LIMIT ?",
        [*_file(row), limit],
    )


def top_properties(con: duckdb.DuckDBPyConnection, row: LedgerRow, limit: int = 10) -> pl.DataFrame:
    """The file's most frequent property names: name, label, rows, people (estimated),
    numeric rows."""
    return _frame(
        con,
        "SELECT name, mode(name_label) AS label, count(*) AS rows, "
        "approx_count_distinct(person) AS people, count(value_number) AS numeric_rows "
        f"FROM km_properties WHERE {_OF_FILE} "
        "GROUP BY name ORDER BY rows DESC, name LIMIT ?",
        [*_file(row), limit],
    )


def reject_reasons(
    con: duckdb.DuckDBPyConnection, row: LedgerRow, examples: int = 3, example_chars: int = 120
) -> pl.DataFrame:
    """Rejected lines per reason, most frequent first, with the first few of each (kept
    ``examples`` at a time: memory does not grow with the number of rejects)."""
    return _frame(
        con,
        "SELECT reason, count(*) AS lines, min(line_no, ?) AS first_lines, "
        "min_by(left(raw_line, ?), line_no, ?) AS examples "
        f"FROM km_rejects WHERE {_OF_FILE} GROUP BY reason ORDER BY lines DESC, reason",
        [examples, example_chars, examples, *_file(row)],
    )


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(name, type) of each column of ``table``, in order."""
    return [
        (name, data_type)
        for name, data_type in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
    ]


def reject_batches(
    con: duckdb.DuckDBPyConnection, row: LedgerRow, batch_rows: int = 50_000
) -> Iterator[pl.DataFrame]:
    """The file version's rejects in line order, ``batch_rows`` at a time (bounded memory).

    Read on a cursor of its own, so the connection stays free for other statements.
    """
    with con.cursor() as cursor:
        # A relation streams its result; a DB-API result would be copied whole first.
        reader = cursor.sql(
            "SELECT line_no, reason, raw_line, raw_chars FROM km_rejects "
            f"WHERE {_OF_FILE} ORDER BY line_no",
            params=_file(row),
        ).to_arrow_reader(batch_rows)
        for batch in reader:
            yield pl.DataFrame(pl.from_arrow(batch))
