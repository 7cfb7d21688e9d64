"""KISSmetrics' semantics as views: one event per (person, name, second), one property
value per (person, name, second), and one person per connected group of aliases."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import polars as pl

from kmdagster.km_format.identities import identity_groups
from kmdagster.km_format.split import split_km_lines
from kmdagster.warehouse.warehouse import DuckDBWarehouse

T1, T2 = 1_700_000_000, 1_700_000_005


def load(warehouse: DuckDBWarehouse, key: str, lines: list[dict[str, Any]]) -> None:
    data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    row = warehouse.open_file("accounts", key, f'"{key}"', len(data))
    piece = warehouse.lay_out(split_km_lines(data, 1, 1_764_000_000))
    warehouse.commit_chunk(row, [(piece, len(data))])


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


def test_the_readme_queries_give_kissmetrics_answers(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()
    counts, plans, identities = [
        query.strip() for query in re.findall(r"```sql\n(.*?)```", readme, re.S)[0].split(";")
    ][:3]
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        load(
            warehouse,
            "accounts.1.json",
            [
                {"_p": "user42@example.com", "_t": T1, "_n": "Signed Up", "Plan": "Free"},
                {"_p": "user42@example.com", "_t": T1, "_n": "signed up"},  # same event
                {"_p": "crm-42", "_t": T2, "_n": "Purchased", "Plan": "Gold"},
                {"_p": "user42@example.com", "_t": T2, "_p2": "crm-42"},  # one person
                {"_p": "user7@example.com", "_t": T1, "_n": "Signed Up"},
            ],
        )
        con = warehouse.database.connection
        assert con.execute(counts).fetchall() == [("signed up", 2, 2), ("purchased", 1, 1)]
        assert sorted(con.execute(plans).fetchall()) == [("crm-42", "Gold")]
        assert sorted(con.execute(identities).fetchall()) == [
            ("crm-42",),
            ("user42@example.com",),
        ]
