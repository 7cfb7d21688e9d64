"""Event and property names stored once: each label as sent gets a ``name_id`` in ``km_names``.

``NameIds`` remembers the ids it has seen, so a chunk asks the warehouse only for labels
new to this connection. Ids learned inside a transaction count only once it commits.
"""

from __future__ import annotations

import duckdb
import polars as pl

NAME_ID = pl.Int32


class NameIds:
    """(kind, label) -> name_id for one warehouse connection."""

    def __init__(self) -> None:
        self._committed: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], int] = {}

    def with_name_ids(
        self, con: duckdb.DuckDBPyConnection, kind: str, rows: pl.DataFrame, name: str, label: str
    ) -> pl.DataFrame:
        """``rows`` with their ``label`` column replaced by ``name_id`` (``name`` dropped)."""
        ids = self._ids_for(con, kind, rows.select(name, label).unique(label))
        labels = list(ids)
        return (
            rows.drop(name)
            .with_columns(
                pl.col(label).replace_strict(labels, [ids[x] for x in labels], return_dtype=NAME_ID)
            )
            .rename({label: "name_id"})
        )

    def _ids_for(
        self, con: duckdb.DuckDBPyConnection, kind: str, names: pl.DataFrame
    ) -> dict[str, int]:
        """label -> name_id for every label of ``names`` (name, label), adding new ones."""
        found: dict[str, int] = {}
        unknown = []
        for name, label in names.iter_rows():
            known = self._committed.get((kind, label)) or self._pending.get((kind, label))
            if known is None:
                unknown.append((name, label))
            else:
                found[label] = known
        if unknown:
            new_names = pl.DataFrame(unknown, schema=["name", "label"], orient="row")  # noqa: F841
            con.execute(
                "INSERT INTO km_names SELECT nextval('km_name_ids'), ?, name, label "
                "FROM new_names ON CONFLICT DO NOTHING",
                [kind],
            )
            rows = con.execute(
                "SELECT label, name_id FROM km_names WHERE kind = ? "
                "AND label IN (SELECT label FROM new_names)",
                [kind],
            ).fetchall()
            for label, name_id in rows:
                self._pending[(kind, label)] = name_id
                found[label] = name_id
        return found

    def commit(self) -> None:
        self._committed.update(self._pending)
        self._pending.clear()

    def rollback(self) -> None:
        self._pending.clear()
