"""The previous release's storage, for the benchmark's before/after: wide tables.

Every row carried ``source, file_key, file_etag`` and its event or property name twice
(normalised and as sent), as text. ``WideTablesWarehouse`` writes the same chunks, with
the same ledger and transactions, into such tables, so the benchmark can time both
layouts on the same file in the same run. ``NoRowsWarehouse`` stores no rows at all: the
import's cost without any insert, which both layouts share.
"""

from __future__ import annotations

import polars as pl

from kmdagster.km_format.split import SplitLines
from kmdagster.warehouse.duckdb_database import DuckDBDatabase
from kmdagster.warehouse.piece_rows import PieceRows
from kmdagster.warehouse.warehouse import DuckDBWarehouse

WIDE_TABLES = """
CREATE TABLE IF NOT EXISTS wide_events (
    source VARCHAR NOT NULL, file_key VARCHAR NOT NULL, file_etag VARCHAR NOT NULL,
    line_no BIGINT NOT NULL, person VARCHAR NOT NULL, event VARCHAR NOT NULL,
    event_label VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS wide_properties (
    source VARCHAR NOT NULL, file_key VARCHAR NOT NULL, file_etag VARCHAR NOT NULL,
    line_no BIGINT NOT NULL, person VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL,
    name VARCHAR NOT NULL, name_label VARCHAR NOT NULL, value VARCHAR NOT NULL,
    value_number DOUBLE
);
CREATE TABLE IF NOT EXISTS wide_aliases (
    source VARCHAR NOT NULL, file_key VARCHAR NOT NULL, file_etag VARCHAR NOT NULL,
    line_no BIGINT NOT NULL, person VARCHAR NOT NULL, alias VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS wide_rejects (
    source VARCHAR NOT NULL, file_key VARCHAR NOT NULL, file_etag VARCHAR NOT NULL,
    line_no BIGINT NOT NULL, byte_offset BIGINT, reason VARCHAR NOT NULL,
    raw_line VARCHAR NOT NULL, raw_chars BIGINT NOT NULL, error_position BIGINT
);
"""


class NoRowsWarehouse(DuckDBWarehouse):
    """The same ledger and transactions; no rows stored, nothing laid out for them."""

    def lay_out(self, split: SplitLines) -> PieceRows:
        # No identity groups either: the previous release kept none.
        return PieceRows(split, rows={}, names={}, alias_pairs=split.aliases.clear())


class WideTablesWarehouse(NoRowsWarehouse):
    """The same ledger and transactions; rows written to the previous wide layout, from
    the split's frames as they are (the previous release laid nothing out)."""

    def __init__(self, database: DuckDBDatabase, writer: bool = True) -> None:
        super().__init__(database, writer)
        self.database.connection.execute(WIDE_TABLES)

    def _insert_rows(self, piece: PieceRows, file_id: int) -> None:
        split = piece.split
        found = self.database.connection.execute(
            "SELECT source, file_key, file_etag FROM km_import_files WHERE file_id = ?", [file_id]
        ).fetchone()
        assert found is not None
        for table, frame in split.tables().items():
            if frame.height:
                arrow_rows = frame.to_arrow(compat_level=pl.CompatLevel.newest())  # noqa: F841
                columns = ", ".join(frame.columns)
                self.database.connection.execute(
                    f"INSERT INTO {table.replace('km_', 'wide_')} (source, file_key, file_etag, "
                    f"{columns}) SELECT ?, ?, ?, {columns} FROM arrow_rows",
                    list(found),
                )
