"""The warehouse schema: compact storage behind the documented relations, and upgrades.

``fixtures/warehouse_v1.duckdb.gz`` was written by the previous release (schema version
1, wide tables): one file imported in full and one stopped partway, from km_file seeds 1
(10 blocks) and 2 (30 blocks, 1 KB chunks).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest

from kmdagster.cli import main
from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.km_format.split import MAX_RAW_LINE_CHARS, split_km_lines
from kmdagster.markdown import file_states_at_a_glance
from kmdagster.s3.objects import RootFiles, S3File
from kmdagster.status import read_source_status
from kmdagster.warehouse.backends import open_warehouse, read_warehouse
from kmdagster.warehouse.schema import SCHEMA_VERSION, UPGRADE_COMMAND, WarehouseSchemaError
from kmdagster.warehouse.warehouse import (
    DuckDBWarehouse,
    WarehouseUnreachable,
)
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3, free_ports
from kmdagster_tests.helpers import make_config, plain_piece_end, write_config

FIXTURE = Path(__file__).parent / "fixtures" / "warehouse_v1.duckdb.gz"
RELATIONS = ("km_events", "km_properties", "km_aliases", "km_rejects")
DOCUMENTED_COLUMNS = {
    "km_events": [
        "source", "file_key", "file_etag", "line_no", "person", "event", "event_label", "ts",
    ],
    "km_properties": [
        "source", "file_key", "file_etag", "line_no", "person", "ts", "name", "name_label",
        "value", "value_number",
    ],
    "km_aliases": ["source", "file_key", "file_etag", "line_no", "person", "alias", "ts"],
    "km_rejects": ["source", "file_key", "file_etag", "line_no", "reason", "raw_line"],
}  # fmt: skip


@pytest.fixture
def v1_path(tmp_path: Path) -> Path:
    path = tmp_path / "v1.duckdb"
    with gzip.open(FIXTURE) as packed, path.open("wb") as out:
        shutil.copyfileobj(packed, out)
    return path


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every documented column of every relation and the ledger's v1 columns, sorted."""
    found = {
        relation: rows(path, f"SELECT {', '.join(columns)} FROM {relation} ORDER BY ALL")
        for relation, columns in DOCUMENTED_COLUMNS.items()
    }
    found["km_import_files"] = rows(
        path,
        "SELECT source, file_key, file_etag, size_bytes, status, next_offset, lines_read, "
        "lines_loaded, lines_rejected, lines_blank, completed_at FROM km_import_files ORDER BY ALL",
    )
    return found


def test_a_warehouse_of_the_previous_version_is_upgraded_with_every_row_kept(
    v1_path: Path,
) -> None:
    before = snapshot(v1_path)
    assert len(before["km_events"]) == 37 and len(before["km_rejects"]) == 24

    with DuckDBWarehouse.connect(v1_path) as warehouse:
        assert warehouse.upgraded_from == 1

    assert snapshot(v1_path) == before
    assert rows(v1_path, "SELECT version FROM km_schema") == [(SCHEMA_VERSION,)]
    kinds = dict(rows(v1_path, "SELECT table_name, table_type FROM information_schema.tables"))
    assert all(kinds[relation] == "VIEW" for relation in RELATIONS)
    # The per-table counts are filled in from the rows each file held.
    counted = rows(
        v1_path,
        "SELECT file_key, events_rows, properties_rows, aliases_rows, rejects_rows "
        "FROM km_import_files ORDER BY file_key",
    )
    held = [
        (key, *(sum(1 for r in before[t] if r[1] == key) for t in RELATIONS))
        for key in ("accounts.1.json", "accounts.2.json")
    ]
    assert counted == held and counted[0] == ("accounts.1.json", 30, 30, 10, 20)


def test_an_upgraded_warehouse_resumes_its_partial_file_and_takes_new_rows(
    v1_path: Path,
) -> None:
    data = km_file(seed=2, repeats=30).data
    with DuckDBWarehouse.connect(v1_path) as warehouse:
        [(etag, offset, lines)] = warehouse.database.connection.execute(
            "SELECT file_etag, next_offset, lines_read FROM km_import_files "
            "WHERE file_key = 'accounts.2.json'"
        ).fetchall()
        row = warehouse.open_file("accounts", "accounts.2.json", etag, len(data))
        assert (row.next_offset, row.lines_read, row.file_id > 0) == (offset, lines, True)
        split = split_km_lines(data[offset:], lines + 1, 1_764_000_000)
        done = warehouse.commit_chunk(
            row,
            [(warehouse.lay_out(split), plain_piece_end(len(data), row.size_bytes))],
            run_id="test",
        )
    expected = km_file(seed=2, repeats=30)
    assert done.status == "imported" and done.lines_read == expected.lines
    assert rows(
        v1_path,
        "SELECT count(*), count(DISTINCT line_no) FROM km_events "
        "WHERE file_key = 'accounts.2.json'",
    ) == [(expected.events, expected.events)]
    assert done.events_rows == expected.events and done.rejects_rows == expected.rejects


def test_a_reader_refuses_an_old_warehouse_naming_the_upgrade(v1_path: Path) -> None:
    with (
        pytest.raises(WarehouseSchemaError, match=UPGRADE_COMMAND),
        DuckDBWarehouse.reader(v1_path),
    ):
        pass


def test_a_newer_warehouse_is_refused_by_readers_and_writers(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    with DuckDBWarehouse.connect(path):
        pass
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE km_schema SET version = ?", [SCHEMA_VERSION + 1])
    for opening in (DuckDBWarehouse.connect, DuckDBWarehouse.reader):
        with pytest.raises(WarehouseSchemaError, match="newer kmdagster"), opening(path):
            pass


def test_rejected_lines_are_kept_short_with_their_full_length(tmp_path: Path) -> None:
    long_line = '{"_p": "a", "_t": 1700000000, "x": ' + "[" * 50_000
    split = split_km_lines(long_line.encode() + b"\n", 1, 1_764_000_000)
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        row = warehouse.open_file("accounts", "k.json", '"e"', len(long_line) + 1)
        warehouse.commit_chunk(
            row,
            [(warehouse.lay_out(split), plain_piece_end(len(long_line) + 1, row.size_bytes))],
            run_id="test",
        )
        [(kept, full)] = warehouse.database.connection.execute(
            "SELECT length(raw_line), raw_chars FROM km_rejects"
        ).fetchall()
    assert (kept, full) == (MAX_RAW_LINE_CHARS, len(long_line))


def test_names_are_stored_once_with_each_label_as_sent(tmp_path: Path) -> None:
    lines = b"\n".join(
        [
            b'{"_p": "a", "_t": 1700000000, "_n": "Signed Up", "Plan": "Gold"}',
            b'{"_p": "b", "_t": 1700000001, "_n": "signed up", "plan": "Free"}',
            b'{"_p": "c", "_t": 1700000002, "_n": "Signed Up"}',
        ]
    )
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        for n, key in enumerate(("a.json", "b.json")):  # the second file learns no new name
            row = warehouse.open_file("accounts", key, f'"{n}"', len(lines))
            piece = warehouse.lay_out(split_km_lines(lines, 1, 1_764_000_000))
            warehouse.commit_chunk(
                row, [(piece, plain_piece_end(len(lines), row.size_bytes))], run_id="test"
            )
        con = warehouse.database.connection
        names = con.execute("SELECT kind, name, label FROM km_names ORDER BY ALL").fetchall()
        events = con.execute("SELECT event, event_label FROM km_events ORDER BY ALL").fetchall()
    assert names == [
        ("event", "signed up", "Signed Up"),
        ("event", "signed up", "signed up"),
        ("property", "plan", "Plan"),
        ("property", "plan", "plan"),
    ]
    assert events == [("signed up", "Signed Up")] * 4 + [("signed up", "signed up")] * 2


def test_the_upgrade_command_upgrades_once(
    v1_path: Path,
    tmp_path: Path,
    capsys: Any,
    monkeypatch: Any,
    s3_server: SeaweedS3,
    bucket: str,
) -> None:
    config = make_config(s3_server, bucket, v1_path)
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(write_config(tmp_path / "km.yaml", config)))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["upgrade-warehouse"]) == 0
    assert "upgraded from schema version 1" in capsys.readouterr().out
    assert main(["upgrade-warehouse"]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out
    assert main(["status", "accounts", "--json"]) == 0  # readers take it now
    files = json.loads(capsys.readouterr().out)["files"]
    assert {f["key"] for f in files} == {"accounts.1.json", "accounts.2.json"}


def test_a_version_2_warehouse_gains_the_run_ledger(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    with DuckDBWarehouse.connect(path):
        pass
    with duckdb.connect(str(path)) as con:  # as version 2 left it
        con.execute("DROP TABLE km_import_runs")
        con.execute("UPDATE km_schema SET version = 2")
    with pytest.raises(WarehouseSchemaError, match=UPGRADE_COMMAND), DuckDBWarehouse.reader(path):
        pass
    with DuckDBWarehouse.connect(path) as warehouse:
        assert warehouse.upgraded_from == 2
    assert rows(path, "SELECT count(*) FROM km_import_runs") == [(0,)]
    assert rows(path, "SELECT version FROM km_schema") == [(SCHEMA_VERSION,)]


def test_a_version_3_warehouse_gains_reject_locations_keeping_its_rejects(
    warehouse_settings: WarehouseSettings,
) -> None:
    bad = b"not json\n"
    with open_warehouse(warehouse_settings) as warehouse:
        row = warehouse.open_file("accounts", "old.json", '"e1"', len(bad))
        warehouse.commit_chunk(
            row,
            [
                (
                    warehouse.lay_out(split_km_lines(bad, 1, 0)),
                    plain_piece_end(len(bad), row.size_bytes),
                )
            ],
            run_id="test",
        )
        db = warehouse.database  # as version 3 left it: rejects not located
        for view in ("km_rejects", "km_rejects_replaced"):
            db.execute(f"DROP VIEW {view}")
        for column in ("byte_offset", "error_position"):
            db.execute(f"ALTER TABLE km_reject_rows DROP COLUMN {column}")
        db.execute("UPDATE km_schema SET version = 3")
    with open_warehouse(warehouse_settings) as warehouse:
        assert warehouse.upgraded_from == 3
        row = warehouse.open_file("accounts", "new.json", '"e2"', len(bad) * 2)
        two = split_km_lines(bad * 2, 1, 0, first_byte_offset=0)
        warehouse.commit_chunk(
            row,
            [(warehouse.lay_out(two), plain_piece_end(len(bad) * 2, row.size_bytes))],
            run_id="test",
        )
        found = warehouse.database.rows(
            "SELECT file_key, line_no, reason, byte_offset FROM km_rejects ORDER BY 1, 2"
        )
    assert found == [
        ("new.json", 1, "not_an_object", 0),
        ("new.json", 2, "not_an_object", len(bad)),
        ("old.json", 1, "not_an_object", None),
    ]


def tableless_duckdb(path: Path) -> None:
    """What a first import killed inside its schema transaction leaves: a DuckDB file
    with no tables."""
    duckdb.connect(str(path)).close()


@pytest.mark.parametrize("make_file", [tableless_duckdb, Path.touch], ids=["tableless", "empty"])
def test_a_warehouse_file_without_tables_reads_as_nothing_imported(
    tmp_path: Path, make_file: Any
) -> None:
    path = tmp_path / "w.duckdb"
    make_file(path)
    settings = WarehouseSettings(duckdb_path=str(path))
    with read_warehouse(settings) as warehouse:
        assert warehouse is None
    source = SourceConfig(name="accounts", bucket="km-imports", base_filename="accounts.json")
    waiting = S3File(key="accounts.1.json", etag="e1", size=10)
    status = read_source_status(None, source, settings, 1.0, root=RootFiles([waiting]))
    assert status.ledger_note is None
    assert [(s.key, s.state) for s in status.states] == [("accounts.1.json", "pending")]
    with open_warehouse(settings) as warehouse:  # the next import creates the tables
        assert warehouse.upgraded_from is None
    assert rows(path, "SELECT version FROM km_schema") == [(SCHEMA_VERSION,)]


def test_a_file_that_is_not_duckdb_is_named_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("my notes, not a database\n")
    for opening in (DuckDBWarehouse.connect, DuckDBWarehouse.reader):
        with (
            pytest.raises(WarehouseSchemaError, match="is not a DuckDB database") as error,
            opening(path),
        ):
            pass
        assert str(path) in str(error.value) and "warehouse.duckdb_path" in str(error.value)
    assert path.read_text() == "my notes, not a database\n"  # never overwritten


def test_an_unreachable_postgres_warehouse_is_named_and_status_falls_back_to_s3(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    settings = WarehouseSettings(
        backend="postgres", postgres_url=f"postgresql://kmdagster@127.0.0.1:{port}/km"
    )
    monkeypatch.setenv("PGPASSWORD", "s3cret-pw")
    with pytest.raises(WarehouseUnreachable) as error, open_warehouse(settings):
        pass
    message = str(error.value)
    assert f"postgresql://kmdagster@127.0.0.1:{port}/km" in message and "PGPASSWORD" in message
    assert "s3cret-pw" not in message
    source = SourceConfig(name="accounts", bucket="km-imports", base_filename="accounts.json")
    waiting = S3File(key="accounts.1.json", etag="e1", size=10)
    status = read_source_status(None, source, settings, 1.0, root=RootFiles([waiting]))
    assert status.ledger_note is not None and "ledger not read" in status.ledger_note
    assert [(s.key, s.state) for s in status.states] == [("accounts.1.json", "pending")]


def test_a_tick_reads_the_current_versions_and_the_latest_not_the_whole_history(
    warehouse_settings: WarehouseSettings,
) -> None:
    """The backlog check's read: versions at the root, unfinished ones and the latest few,
    whatever the number archived; the states it gives the root files are the full read's."""
    source = SourceConfig(name="accounts", bucket="km-imports", base_filename="accounts.json")
    with open_warehouse(warehouse_settings) as warehouse:
        for n in range(40):  # a long history, archived
            row = warehouse.open_file("accounts", f"accounts.{n:03d}.json", f"e{n}", 10)
            warehouse.mark_archived(row, f"completed_imports/accounts.{n:03d}.json")
        resent = warehouse.ledger_row("accounts", "accounts.003.json", "e3")
        partial = warehouse.open_file("accounts", "accounts.100.json", "p", 10)
        halfway = {"status": "'in_progress'", "next_offset": "4"}
        warehouse.database.execute(
            warehouse.database.ledger_writes.update(halfway, "file_key = $1"), [partial.file_key]
        )
    assert resent is not None
    root = RootFiles(
        [
            S3File(key="accounts.003.json", etag="e3", size=10),  # sent again, imported
            S3File(key="accounts.100.json", etag="p", size=10),
            S3File(key="accounts.200.json", etag="new", size=10),  # no ledger row yet
        ]
    )
    full = read_source_status(None, source, warehouse_settings, 5.0, root=root)
    glance = read_source_status(None, source, warehouse_settings, 5.0, root=root, recent=5)
    assert len(full.states) == 42 and not full.left_out
    # 5 latest (the in-progress one among them) + the re-sent one + the new file.
    assert len(glance.states) == 7
    assert glance.left_out == {"archived": 35}
    at_root = {s.key: s.state for s in glance.states if s.at_bucket_root}
    assert at_root == {s.key: s.state for s in full.states if s.at_bucket_root}
    assert at_root == {
        "accounts.003.json": "reimported_identical",
        "accounts.100.json": "in_progress",
        "accounts.200.json": "pending",
    }
    assert file_states_at_a_glance(glance.states, glance.left_out)["archived_files"] == 39
    assert file_states_at_a_glance(full.states)["archived_files"] == 39


NEWER_DUCKDB_FILE = Path(__file__).parent / "fixtures" / "written_by_duckdb_2.duckdb.gz"
# What DuckDB 2.0.1's EXPORT DATABASE wrote of the same warehouse (one file imported).
NEWER_DUCKDB_EXPORT = Path(__file__).parent / "fixtures" / "duckdb_2_export.tar.gz"


def test_a_file_in_a_newer_duckdb_format_is_refused_naming_the_way_to_move_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "newer.duckdb"
    with gzip.open(NEWER_DUCKDB_FILE) as packed, path.open("wb") as out:
        shutil.copyfileobj(packed, out)
    for open_it in (DuckDBWarehouse.connect, DuckDBWarehouse.reader):
        with pytest.raises(WarehouseSchemaError) as refused, open_it(path):
            pass
        message = str(refused.value)
        assert str(path) in message
        assert f"than the {duckdb.__version__}" in message
        assert "EXPORT DATABASE" in message and "kmdagster import-warehouse" in message
    assert path.stat().st_size > 0  # nothing was overwritten


def test_a_newer_duckdb_export_imports_into_a_warehouse_that_takes_new_rows(
    tmp_path: Path, capsys: Any, monkeypatch: Any, s3_server: SeaweedS3, bucket: str
) -> None:
    shutil.unpack_archive(NEWER_DUCKDB_EXPORT, tmp_path)
    path = tmp_path / "moved.duckdb"
    config = make_config(s3_server, bucket, path)
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(write_config(tmp_path / "km.yaml", config)))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["import-warehouse", str(tmp_path / "km_export")]) == 0
    assert "1 file versions in the ledger" in capsys.readouterr().out
    assert rows(path, "SELECT person, event, event_label FROM km_events") == [
        ("bob@example.com", "signed up", "Signed Up")
    ]
    with DuckDBWarehouse.connect(path) as warehouse:  # the sequences went on where they were
        row = warehouse.open_file("accounts", "accounts.2.json", "e2", 10)
        assert row.file_id == 2
    assert main(["import-warehouse", str(tmp_path / "km_export")]) == 1  # never over a file
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("warehouse_settings", ["ducklake"], indirect=True)
def test_a_version_4_lake_gains_its_alias_merges_marked_as_done(
    warehouse_settings: WarehouseSettings,
) -> None:
    file = km_file(seed=3, repeats=5)
    with open_warehouse(warehouse_settings) as warehouse:
        row = warehouse.open_file("accounts", "old.json", '"e1"', len(file.data))
        split = split_km_lines(file.data, 1, 1_800_000_000)
        end = plain_piece_end(len(file.data), row.size_bytes)
        warehouse.commit_chunk(row, [(warehouse.lay_out(split), end)], run_id="test")
        db = warehouse.database  # as version 4 left it: groups merged with each chunk
        db.execute("DROP TABLE km_alias_merges")
        db.execute("UPDATE km_schema SET version = 4")
        [(groups,)] = db.rows("SELECT count(DISTINCT person_id) FROM km_identity_groups")
    assert groups == file.aliases > 0
    with open_warehouse(warehouse_settings) as warehouse:
        assert warehouse.upgraded_from == 4
        db = warehouse.database
        assert db.rows("SELECT through_line FROM km_alias_merges") == [(file.lines,)]
        assert db.rows("SELECT max(version) FROM km_schema") == [(SCHEMA_VERSION,)]
        [(after,)] = db.rows("SELECT count(DISTINCT person_id) FROM km_identity_groups")
    assert after == groups


def test_the_checks_read_on_every_core_and_the_writer_returns_to_one(tmp_path: Path) -> None:
    """Each core the checks read on has the writer's memory: a grouping's threads each hold
    buffers DuckDB cannot spill (the duplicate check of a 2 GB file ran out of memory with
    two threads in the writer's one limit)."""
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        database = warehouse.database

        def settings() -> tuple[int, float]:
            [(count, limit)] = database.rows(
                "SELECT current_setting('threads'), current_setting('memory_limit')"
            )
            number, unit = limit.split()
            return int(count), float(number) * {"MiB": 1, "GiB": 1024}[unit]

        alone, writer_limit = settings()
        assert alone == 1
        with database.on_every_core():
            cores, limit = settings()
            assert cores == (os.cpu_count() or 1)
            assert limit >= cores * writer_limit * 0.95  # DuckDB shows MiB of MB
        assert settings() == (1, writer_limit)
