"""Event and property names stored once: each label as sent gets a ``name_id`` in ``km_names``.

``NameIds`` remembers the ids it has seen, so a chunk asks the warehouse only for labels
new to this connection. New names are committed at once, on a connection of their own:
a name without rows yet is harmless, and two sources' imports then never wait on each
other's chunk transactions for a name they both send.
"""

from __future__ import annotations

from contextlib import closing

import polars as pl

from kmdagster.storage.database import Database

NAME_ID = pl.Int32


class NameIds:
    """(kind, label) -> name_id for one warehouse connection."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], int] = {}

    def with_name_ids(
        self, database: Database, kind: str, rows: pl.DataFrame, name: str, label: str
    ) -> pl.DataFrame:
        """``rows`` with their ``label`` column replaced by ``name_id`` (``name`` dropped)."""
        ids = self._ids_for(database, kind, rows.select(name, label).unique(label))
        labels = list(ids)
        return (
            rows.drop(name)
            .with_columns(
                pl.col(label).replace_strict(labels, [ids[x] for x in labels], return_dtype=NAME_ID)
            )
            .rename({label: "name_id"})
        )

    def _ids_for(self, database: Database, kind: str, names: pl.DataFrame) -> dict[str, int]:
        """label -> name_id for every label of ``names`` (name, label), adding new ones."""
        found: dict[str, int] = {}
        unknown = []
        for name, label in names.iter_rows():
            known = self._known.get((kind, label))
            if known is None:
                unknown.append((name, label))
            else:
                found[label] = known
        if unknown:
            new_names = pl.DataFrame(unknown, schema=["name", "label"], orient="row")
            with closing(database.autonomous()) as own, own.temporary("km_new_names", new_names):
                # In label order: two writers adding the same names take them in one order.
                own.execute(
                    "INSERT INTO km_names SELECT nextval('km_name_ids'), ?, name, label "
                    "FROM km_new_names ORDER BY label ON CONFLICT DO NOTHING",
                    [kind],
                )
                rows = own.rows(
                    "SELECT label, name_id FROM km_names WHERE kind = ? "
                    "AND label IN (SELECT label FROM km_new_names)",
                    [kind],
                )
            for label, name_id in rows:
                self._known[(kind, label)] = name_id
                found[label] = name_id
        return found
