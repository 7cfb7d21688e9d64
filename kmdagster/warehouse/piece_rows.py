"""One piece's rows as the storage tables take them, built in the thread that split it.

A chunk's inserts run one after another on one thread, and that thread bounds the import:
every polars call made there waits for polars' thread pool, which the splits keep busy.
So everything the inserts need that does not touch the warehouse is done here, beside
the split: each table's rows as Arrow, and each event or property label coded against the
piece's own list of labels. The insert then maps a few hundred labels to their warehouse
ids (``name_ids.py``) and gathers them with Arrow. Nothing here touches the warehouse.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from kmdagster.km_format.split import SplitLines

# relation -> (the name kind, the column holding the name as stored, the one as sent)
_NAMED_COLUMNS = {
    "km_events": ("event", "event", "event_label"),
    "km_properties": ("property", "name", "name_label"),
}


@dataclass(frozen=True)
class NameCodes:
    """A table's names as codes into the piece's list of distinct labels."""

    kind: str  # "event" or "property"
    codes: pa.Array  # int32, one per row: a position in ``labels``
    labels: list[str]  # as sent (normalised), each once
    names: list[str]  # as stored (lower-cased), one per label


@dataclass(frozen=True)
class PieceRows:
    """One piece's split, and its rows per relation ready to append (no file id yet)."""

    split: SplitLines
    rows: dict[str, pa.Table]  # relation -> rows; a named relation's names are in ``names``
    names: dict[str, NameCodes]  # relation -> its name codes, for km_events and km_properties
    # person, alias: what the chunk merges into identity groups, selected in the
    # splitting thread like the rows
    alias_pairs: pl.DataFrame

    @property
    def row_counts(self) -> dict[str, int]:
        return {relation: frame.height for relation, frame in self.split.tables().items()}


def piece_rows(split: SplitLines, compat_level: pl.CompatLevel) -> PieceRows:
    """Lay ``split``'s rows out for the storage tables, in the Arrow layout of
    ``compat_level`` (the database's ``arrow_layout``)."""
    rows: dict[str, pa.Table] = {}
    names: dict[str, NameCodes] = {}
    for relation, frame in split.tables().items():
        if relation in _NAMED_COLUMNS:
            kind, name, label = _NAMED_COLUMNS[relation]
            names[relation] = _name_codes(kind, frame.get_column(label))
            frame = frame.drop(name, label)
        rows[relation] = frame.to_arrow(compat_level=compat_level)
    return PieceRows(split, rows, names, split.aliases.select("person", "alias"))


def _name_codes(kind: str, labels: pl.Series) -> NameCodes:
    # One pass: each row's position in the list of distinct labels, and that list.
    encoded = pc.dictionary_encode(  # pyright: ignore[reportAttributeAccessIssue]
        labels.to_arrow(compat_level=pl.CompatLevel.newest())
    )
    distinct = pl.Series(encoded.dictionary, dtype=pl.String)
    return NameCodes(
        kind=kind,
        codes=encoded.indices,
        labels=distinct.to_list(),
        # The split stores a name as its label lower-cased: the same function, per label.
        names=distinct.str.to_lowercase().to_list(),
    )
