"""KISSmetrics' semantics as views: one event per (person, name, second), one property
value per (person, name, second), and one person per connected group of aliases."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from kmdagster.cli import main
from kmdagster.config import KmConfig, SourceConfig, WarehouseSettings
from kmdagster.km_format.identities import identity_groups
from kmdagster.km_format.split import split_km_lines
from kmdagster.km_format.summary import PreviewAccumulator
from kmdagster.warehouse.backends import open_warehouse
from kmdagster.warehouse.file_rows import top_events, top_properties
from kmdagster.warehouse.warehouse import DuckDBWarehouse, Warehouse
from kmdagster_tests.helpers import plain_piece_end, write_config

T1, T2 = 1_700_000_000, 1_700_000_005


def load(warehouse: Warehouse, key: str, lines: list[dict[str, Any]]) -> None:
    data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    row = warehouse.open_file("accounts", key, f'"{key}"', len(data))
    piece = warehouse.lay_out(split_km_lines(data, 1, 1_764_000_000))
    warehouse.commit_chunk(
        row, [(piece, plain_piece_end(len(data), row.size_bytes))], run_id="test"
    )


def groups(pairs: list[tuple[str, str]]) -> dict[str, str]:
    frame = pl.DataFrame(pairs, schema=["a", "b"], orient="row")
    return dict(identity_groups(frame).iter_rows())


def test_identity_groups_resolve_chains_cycles_and_separate_groups() -> None:
    assert groups([("c", "b"), ("b", "a"), ("x", "y")]) == {
        "a": "a", "b": "a", "c": "a", "x": "x", "y": "x",
    }  # fmt: skip
    assert groups([("p", "q"), ("q", "r"), ("r", "p")]) == {"p": "p", "q": "p", "r": "p"}
    names = [f"id{i:04d}" for i in range(2000)]
    random.Random(3).shuffle(names)  # a long chain whose smallest name sits anywhere
    chain = groups(list(zip(names, names[1:], strict=False)))
    assert set(chain.values()) == {"id0000"} and len(chain) == 2000
    assert groups([]) == {}


def test_dedup_views_keep_one_event_and_one_property_value_per_second(tmp_path: Path) -> None:
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        load(
            warehouse,
            "accounts.1.json",
            [
                {"_p": "a", "_t": T1, "_n": "Signed Up", "Plan": "Gold"},
                {"_p": "a", "_t": T1, "_n": "signed up", "plan": "Silver"},  # same second
                {"_p": "a", "_t": T2, "_n": "Signed Up"},  # another second
                {"_p": "b", "_t": T1, "_n": "Signed Up"},  # another person
            ],
        )
        load(
            warehouse,
            "accounts.2.json",
            [{"_p": "a", "_t": T1, "_n": "SIGNED UP", "Plan": "Bronze"}],  # sent again later
        )
        con = warehouse.database.connection
        assert con.execute("SELECT count(*) FROM km_events").fetchall() == [(5,)]
        events = con.execute(
            "SELECT person, event, epoch(ts)::BIGINT, file_key, line_no, event_label "
            "FROM km_events_dedup ORDER BY ALL"
        ).fetchall()
        values = con.execute(
            "SELECT person, name, epoch(ts)::BIGINT, value, file_key FROM km_properties_dedup"
        ).fetchall()
    assert events == [
        ("a", "signed up", T1, "accounts.1.json", 1, "Signed Up"),  # the first line that sent it
        ("a", "signed up", T2, "accounts.1.json", 3, "Signed Up"),
        ("b", "signed up", T1, "accounts.1.json", 4, "Signed Up"),
    ]
    assert values == [("a", "plan", T1, "Bronze", "accounts.2.json")]  # the last line's value


def test_people_follow_alias_chains_cycles_and_merges_across_files(tmp_path: Path) -> None:
    def alias(person: str, other: str) -> dict[str, Any]:
        return {"_p": person, "_t": T1, "_p2": other}

    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        load(warehouse, "accounts.1.json", [alias("x", "y"), alias("c1", "c2"), alias("c2", "c3")])
        load(warehouse, "accounts.2.json", [alias("z", "w"), {"_p": "solo", "_t": T1, "_n": "e"}])
        con = warehouse.database.connection

        def people() -> dict[str, str]:
            return dict(con.execute("SELECT identity, person_id FROM km_people").fetchall())

        assert people() == {
            "x": "x", "y": "x", "z": "w", "w": "w", "c1": "c1", "c2": "c1", "c3": "c1",
            "solo": "solo",
        }  # fmt: skip
        # A later file joins the two groups and closes a cycle: one person.
        load(warehouse, "accounts.3.json", [alias("y", "z"), alias("w", "x")])
        merged = people()
    assert {merged[i] for i in ("w", "x", "y", "z")} == {"w"}
    assert merged["c3"] == "c1" and merged["solo"] == "solo"


README_LINES = [
    {"_p": "user42@example.com", "_t": T1, "_n": "Signed Up", "Plan": "Free"},
    {"_p": "user42@example.com", "_t": T1, "_n": "signed up"},  # same event
    {"_p": "crm-42", "_t": T2, "_n": "Purchased", "Plan": "Gold"},
    {"_p": "user42@example.com", "_t": T2, "_p2": "crm-42"},  # one person
    {"_p": "user7@example.com", "_t": T1, "_n": "Signed Up"},
]


def readme_queries() -> list[str]:
    reference = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()
    block = re.findall(r"```sql\n(.*?)```", reference, re.S)[0]
    return [query.strip() for query in block.split(";")][:3]


def through_kmdagster_sql(query: str, capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    assert main(["sql", "--csv", "--", query]) == 0  # "--": the query starts with a comment
    return sorted(list(csv.reader(io.StringIO(capsys.readouterr().out)))[1:])


def configured_with_readme_lines(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warehouse on ``backend`` holding ``README_LINES``, named by KMDAGSTER_CONFIG."""
    settings = WarehouseSettings(
        backend=backend,  # type: ignore[arg-type]
        duckdb_path=str(tmp_path / "w.duckdb"),
        ducklake_catalog=str(tmp_path / "lake" / "catalog.ducklake"),
        ducklake_data_path=str(tmp_path / "lake" / "data"),
    )
    with open_warehouse(settings) as warehouse:
        load(warehouse, "accounts.1.json", README_LINES)
    config = KmConfig(
        warehouse=settings,
        sources=(SourceConfig(name="accounts", bucket="km", base_filename="accounts.json"),),
    )
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(write_config(tmp_path / "km.yaml", config)))


@pytest.mark.parametrize("backend", ["duckdb", "ducklake"])
def test_the_readme_queries_give_kissmetrics_answers_through_kmdagster_sql(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The same answers from a DuckDB file and from a lake, through the one command."""
    configured_with_readme_lines(backend, tmp_path, monkeypatch)
    counts, plans, identities = readme_queries()
    assert through_kmdagster_sql(counts, capsys) == [
        ["purchased", "1", "1"],
        ["signed up", "2", "2"],
    ]
    assert through_kmdagster_sql(plans, capsys) == [["crm-42", "Gold"]]
    assert through_kmdagster_sql(identities, capsys) == [["crm-42"], ["user42@example.com"]]


def test_the_lake_attaches_in_another_duckdb_with_the_statements_kmdagster_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    configured_with_readme_lines("ducklake", tmp_path, monkeypatch)
    assert main(["sql", "--attach"]) == 0
    statements = capsys.readouterr().out
    with duckdb.connect() as analyst:  # as a notebook or the DuckDB CLI would
        analyst.execute(statements)
        assert analyst.execute("SELECT count(*) FROM km_events").fetchall() == [(4,)]
        assert analyst.execute(readme_queries()[2]).fetchall() != []


SPELLINGS = [
    {"_p": "a", "_t": T1, "_n": "Signed Up", "Plan": "Gold"},
    {"_p": "b", "_t": T1, "_n": "signed up", "plan": "Free"},
    {"_p": "c", "_t": T2, "_n": "Signed Up"},
]


def test_the_preview_shows_every_spelling_a_name_was_sent_under() -> None:
    preview = PreviewAccumulator()
    for n, line in enumerate(SPELLINGS, start=1):  # each line a chunk of its own
        data = (json.dumps(line) + "\n").encode()
        preview.add(split_km_lines(data, n, 1_764_000_000, with_sent_names=True))
    summary = preview.summary()
    assert summary.events.select("name", "label", "count").rows() == [
        ("signed up", "Signed Up, signed up", 3)
    ]
    assert summary.properties.select("name", "label").rows() == [("plan", "Plan, plan")]


def test_a_files_top_names_show_every_spelling_sent(tmp_path: Path) -> None:
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        load(warehouse, "accounts.1.json", SPELLINGS)
        row = warehouse.latest_ledger_row("accounts", "accounts.1.json")
        assert row is not None
        events = top_events(warehouse.database, row)
        properties = top_properties(warehouse.database, row)
    assert events.select("event", "label", "rows").rows() == [
        ("signed up", "Signed Up, signed up", 3)
    ]
    assert properties.select("name", "label").rows() == [("plan", "Plan, plan")]
