"""Event and property names stored once: each label as sent gets a ``name_id`` in ``km_names``.

``NameIds`` remembers the ids it has seen, so a piece asks the warehouse only for labels
new to this connection, and maps its rows' name codes (``piece_rows.py``) to ids with one
Arrow gather. New names are committed at once, on a connection of their own:
a name without rows yet is harmless, and two sources' imports then never wait on each
other's chunk transactions for a name they both send. On a lake, where no key stops a
label being added twice, two writers adding names at once both draw ids from
``km_sequences`` and so conflict: the second tries again and finds the first's names.
"""

from __future__ import annotations

from contextlib import closing

import polars as pl
import pyarrow as pa

from kmdagster.warehouse.database import Database, transaction
from kmdagster.warehouse.piece_rows import NameCodes


class NameIds:
    """(kind, label) -> name_id for one warehouse connection."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], int] = {}

    def name_ids(self, database: Database, names: NameCodes) -> pa.Array:
        """Each row's ``name_id`` (int32), adding the labels new to the warehouse."""
        self._learn(database, names)
        by_code = [self._known[(names.kind, label)] for label in names.labels]
        return pa.array(by_code, type=pa.int32()).take(names.codes)

    def _learn(self, database: Database, names: NameCodes) -> None:
        """Remember the ids of the labels of ``names`` not seen yet, adding new ones."""
        kind = names.kind
        unknown = [
            (name, label)
            for name, label in zip(names.names, names.labels, strict=True)
            if (kind, label) not in self._known
        ]
        if not unknown:
            return
        with closing(database.autonomous()) as own:
            rows = transaction(own, lambda: _add_names(own, kind, unknown))
        for label, name_id in rows:
            self._known[(kind, label)] = name_id


def _add_names(database: Database, kind: str, names: list[tuple[str, str]]) -> list[tuple]:
    """Add those of ``names`` (name, label) new to the warehouse; every label's id."""
    ids = database.next_ids("km_name_ids", len(names))
    new_names = pl.DataFrame(
        [(name_id, name, label) for name_id, (name, label) in zip(ids, names, strict=True)],
        schema={"name_id": pl.Int32, "name": pl.String, "label": pl.String},
        orient="row",
    )
    with database.temporary("km_new_names", new_names):
        # In label order: two writers adding the same names take them in one order.
        database.execute(
            "INSERT INTO km_names SELECT name_id, $1, name, label FROM km_new_names "
            "WHERE label NOT IN (SELECT label FROM km_names WHERE kind = $1) "
            f"ORDER BY label {database.sql_skip_duplicates}",
            [kind],
        )
        return database.rows(
            "SELECT label, name_id FROM km_names WHERE kind = $1 "
            "AND label IN (SELECT label FROM km_new_names)",
            [kind],
        )
