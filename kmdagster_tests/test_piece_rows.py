"""Unit tests of a piece's rows as the storage tables take them (no warehouse)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from kmdagster.km_format.split import split_km_lines
from kmdagster.warehouse.piece_rows import piece_rows

NOW = 1_800_000_000
LINES = b"\n".join(
    [
        b'{"_p":"a","_t":1700000000,"_n":"Signed Up","Plan":"Pro","a,b":1}',
        b'{"_p":"b","_t":1700000001,"_n":"signed up","plan":"Free"}',
        b"not json",
        b'{"_p":"c","_t":1700000002,"_n":"Viewed","Plan":"Pro","_p2":"d"}',
        b"",
        b'{"_p":"\xce\xa3","_t":1700000003,"\xc3\x89TAPE":"x"}',
    ]
)


@pytest.mark.parametrize("string_views", [True, False])  # DuckDB's layout, PostgreSQL's
def test_each_rows_name_is_a_code_into_the_pieces_distinct_labels(string_views: bool) -> None:
    split = split_km_lines(LINES, 1, NOW)
    layout = pl.CompatLevel.newest() if string_views else pl.CompatLevel.oldest()
    piece = piece_rows(split, layout)

    for relation, label, name in (
        ("km_events", "event_label", "event"),
        ("km_properties", "name_label", "name"),
    ):
        codes = piece.names[relation]
        sent = split.tables()[relation]
        assert len(set(codes.labels)) == len(codes.labels)  # each label once
        by_row = [codes.labels[code] for code in codes.codes.to_pylist()]
        assert by_row == sent[label].to_list()
        stored = dict(zip(codes.labels, codes.names, strict=True))
        assert [stored[x] for x in by_row] == sent[name].to_list()
        # The names travel as codes, not as columns of the rows.
        assert {label, name}.isdisjoint(piece.rows[relation].column_names)

    assert piece.names["km_events"].labels == ["Signed Up", "signed up", "Viewed"]
    assert sorted(piece.names["km_properties"].labels) == ["Plan", "a b", "plan", "ÉTAPE"]
    assert piece.row_counts == {
        "km_events": 3,
        "km_properties": 5,
        "km_aliases": 1,
        "km_rejects": 1,
    }
    assert piece.alias_pairs.rows() == [("c", "d")]
    text = pa.string_view() if string_views else pa.large_string()
    assert piece.rows["km_properties"].schema.field("value").type == text
    assert piece.rows["km_rejects"].column("line_no").to_pylist() == [3]


def test_a_piece_without_names_has_empty_codes() -> None:
    piece = piece_rows(split_km_lines(b"\n\n", 1, NOW), pl.CompatLevel.newest())
    assert piece.names["km_events"].labels == [] and len(piece.names["km_events"].codes) == 0
    assert all(rows.num_rows == 0 for rows in piece.rows.values())
