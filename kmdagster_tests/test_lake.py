"""The lake warehouse beyond one machine: a PostgreSQL catalog, Parquet files on S3.

The warehouse tests of every backend (``warehouse_settings``) run on a lake with a local
catalog too; these are what only a lake does: data on S3, readers that hold it open while
imports commit, and two sources importing at once from separate processes.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, materialize

from kmdagster.config import KmConfig, S3Settings, SourceConfig, WarehouseSettings
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.naming import LAKE_FILES_ASSET, LAKE_MAINTENANCE_SCHEDULE
from kmdagster.defs.resources import build_resources
from kmdagster.warehouse import ducklake_database
from kmdagster.warehouse.backends import open_warehouse
from kmdagster.warehouse.ducklake_database import DuckLakeDatabase, WarehouseLakeError
from kmdagster.warehouse.warehouse import Warehouse
from kmdagster_dev.km_files import km_file
from kmdagster_dev.postgres import PostgresServer
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import (
    ADMIN,
    assert_file_loaded_once,
    make_config,
    run_import,
    warehouse_rows,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("accounts", "orders")
_lakes = itertools.count()


@pytest.fixture
def lake_on_s3(postgres_server: PostgresServer, s3_server: SeaweedS3, bucket: str) -> KmConfig:
    """Sources ``accounts`` and ``orders`` in ``bucket``, and a lake with its catalog in a
    PostgreSQL database and its files under s3://bucket/lake/."""
    catalog = postgres_server.create_database(f"km_lake_{next(_lakes)}")
    warehouse = WarehouseSettings(
        backend="ducklake", ducklake_catalog=catalog, ducklake_data_path=f"s3://{bucket}/lake/"
    )
    sources = tuple(
        SourceConfig(name=name, bucket=bucket, base_filename=f"{name}.json", chunk_bytes=1024)
        for name in SOURCES
    )
    s3_settings = S3Settings(endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    return KmConfig(s3=s3_settings, warehouse=warehouse, sources=sources)


def keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_lake_on_s3_with_a_postgres_catalog_loads_every_line_once(
    lake_on_s3: KmConfig, s3: Any, bucket: str
) -> None:
    file = km_file(seed=1, repeats=300)
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=file.data)
    with open_warehouse(lake_on_s3.warehouse) as warehouse:
        # Chunks of more rows than DuckLake keeps in the catalog itself (10), so Parquet
        # files are written to S3.
        report = run_import(s3, warehouse, bucket, "accounts.1.json", chunk_bytes=8192)
        location = warehouse.database.location
    assert report.ledger.is_complete and report.chunks > 1
    assert_file_loaded_once(lake_on_s3.warehouse, "accounts.1.json", file)
    stored = keys_under(s3, bucket, "lake/")
    assert any(key.endswith(".parquet") for key in stored), stored
    # Named without the catalog's password and with no AWS key anywhere.
    assert ADMIN.secret_key not in location and ADMIN.access_key not in location


def test_a_reader_holding_the_lake_open_never_stops_an_import(
    lake_on_s3: KmConfig, s3: Any, bucket: str
) -> None:
    """An analyst's session open on the lake, mid-transaction, while a file imports: the
    import commits every chunk; the session sees its snapshot until it starts another."""
    first, second = km_file(seed=1), km_file(seed=2, repeats=30)
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=first.data)
    s3.put_object(Bucket=bucket, Key="accounts.2.json", Body=second.data)
    settings = lake_on_s3.warehouse
    with open_warehouse(settings) as warehouse:
        run_import(s3, warehouse, bucket, "accounts.1.json", chunk_bytes=1024)
    with DuckLakeDatabase.attach(settings, read_only=True, lock_wait_seconds=5) as reader:
        reader.begin()
        [(before,)] = reader.rows("SELECT count(*) FROM km_events")
        with open_warehouse(settings) as warehouse:
            report = run_import(s3, warehouse, bucket, "accounts.2.json", chunk_bytes=1024)
        assert report.ledger.is_complete and report.chunks > 1
        assert reader.rows("SELECT count(*) FROM km_events") == [(before,)]
        reader.commit()
        [(after,)] = reader.rows("SELECT count(*) FROM km_events")
    assert (before, after) == (first.events, first.events + second.events)


def test_two_sources_import_at_once_from_separate_processes_each_line_once(
    lake_on_s3: KmConfig, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """Two processes, one per source, both mid-import at once (each waits after its first
    chunk until the other has committed one), with aliases in every chunk that rewrite
    groups the other source's chunks rewrite too: no chunk is refused (the groups merge
    apart from it, tried again when it conflicts), and every line of both files is in the
    lake once, every alias in the groups."""
    files = {name: km_file(seed=n, repeats=40) for n, name in enumerate(SOURCES, 1)}
    for name, file in files.items():
        s3.put_object(Bucket=bucket, Key=f"{name}.1.json", Body=file.data)
    config_path = write_config(tmp_path / "km.yaml", lake_on_s3)
    with open_warehouse(lake_on_s3.warehouse) as warehouse:  # the schema first
        # Every person already in a group of their own: each chunk's merge deletes rows,
        # so merges of the two sources that overlap conflict (and are tried again).
        people = [f"user{n}-{i}@example.com" for n in (1, 2) for i in range(40)]
        warehouse.database.execute(
            "INSERT INTO km_identity_groups SELECT p, p FROM unnest($1) AS t(p)", [people]
        )
    env = {**os.environ, "KMDAGSTER_CONFIG": str(config_path)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "kmdagster_tests.lake_writer", name, f"{name}.1.json", other],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, other in zip(SOURCES, reversed(SOURCES), strict=True)
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=600)
        assert writer.returncode == 0, err[-3000:]
        report = json.loads(out)
        assert report["chunks"] > 1
        assert report["read_again"] == 0  # the chunks' own commits never conflict
    for name, file in files.items():
        assert_file_loaded_once(lake_on_s3.warehouse, f"{name}.1.json", file)
    # Each source's aliases merged into groups, none lost to the other's commits.
    [(groups,)] = warehouse_rows(
        lake_on_s3.warehouse, "SELECT count(DISTINCT person_id) FROM km_identity_groups"
    )
    assert groups == sum(file.aliases for file in files.values())


class ChunkMeetsAnotherWriter(Warehouse):
    """A warehouse whose first chunk meets another writer's commit mid-transaction: a
    writer of its own (as another process would be) merges an alias group and deletes a
    row of the events table (as the maintenance job's rewrites do) while the chunk's rows
    go in (after its first append). The chunk's insert into the events table conflicts at
    commit; the group merge does not touch the chunk's transaction."""

    def __init__(self, database: DuckLakeDatabase, settings: WarehouseSettings) -> None:
        super().__init__(database)
        self.settings = settings
        self.met = False

    def _append_gathered(self, relation: str, file_id: int) -> None:
        super()._append_gathered(relation, file_id)
        if not self.met:
            self.met = True
            with DuckLakeDatabase.attach(self.settings, False, 5) as other:
                other.begin()
                other.execute("DELETE FROM km_identity_groups WHERE identity = 'x'")
                other.execute("INSERT INTO km_identity_groups VALUES ('x', 'x'), ('y', 'x')")
                other.execute("DELETE FROM km_event_rows WHERE file_id = 0")
                other.commit()


def test_a_chunk_refused_for_another_writers_commit_is_read_again_and_loaded_once(
    lake_on_s3: KmConfig, s3: Any, bucket: str
) -> None:
    file = km_file(seed=1, repeats=30)
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=file.data)
    with open_warehouse(lake_on_s3.warehouse) as warehouse:
        # Groups both writers change, and an event row (of no file) the other deletes.
        warehouse.database.execute(
            "INSERT INTO km_identity_groups VALUES ('x', 'x'), "
            "('user1-0@example.com', 'user1-0@example.com')"
        )
        warehouse.database.execute(
            "INSERT INTO km_event_rows VALUES (0, 1, 'x', 1, TIMESTAMPTZ '2026-01-01')"
        )
    with DuckLakeDatabase.attach(lake_on_s3.warehouse, False, 5) as database:
        warehouse = ChunkMeetsAnotherWriter(database, lake_on_s3.warehouse)
        report = run_import(s3, warehouse, bucket, "accounts.1.json", chunk_bytes=1024)
    assert report.chunks_read_again == 1
    assert report.ledger.is_complete
    assert_file_loaded_once(lake_on_s3.warehouse, "accounts.1.json", file)
    [(groups,)] = warehouse_rows(
        lake_on_s3.warehouse, "SELECT count(DISTINCT person_id) FROM km_identity_groups"
    )
    assert groups == file.aliases + 1  # the file's, and the other writer's


def test_maintenance_merges_small_files_and_deletes_orphans_keeping_every_row(
    s3: Any, s3_server: SeaweedS3, bucket: str, tmp_path: Path, instance: DagsterInstance
) -> None:
    """The lake_files asset, materialized as its schedule would: the chunks' small files
    merged, a file a killed writer left (no commit names it) deleted once a day old, and
    every relation's rows as they were."""
    settings = WarehouseSettings(
        backend="ducklake",
        ducklake_catalog=str(tmp_path / "lake" / "catalog.ducklake"),
        ducklake_data_path=str(tmp_path / "lake" / "data"),
    )
    file = km_file(seed=3, repeats=200)
    s3.put_object(Bucket=bucket, Key="accounts.1.json", Body=file.data)
    with open_warehouse(settings) as warehouse:
        run_import(s3, warehouse, bucket, "accounts.1.json", chunk_bytes=4096)
    events_dir = tmp_path / "lake" / "data" / "main" / "km_event_rows"
    orphan = events_dir / "ducklake-left-by-a-killed-writer.parquet"
    shutil.copy(next(events_dir.glob("*.parquet")), orphan)
    two_days_ago = time.time() - 2 * 86400
    os.utime(orphan, (two_days_ago, two_days_ago))
    counts = "SELECT (SELECT count(*) FROM km_events), (SELECT count(*) FROM km_properties)"
    rows_before = warehouse_rows(settings, counts)

    config = make_config(s3_server, bucket, settings)
    defs = build_definitions(config)
    result = materialize(
        [defs.get_assets_def(LAKE_FILES_ASSET)],
        resources=build_resources(config),
        instance=instance,
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("kmdagster__lake_files")
    figures = {
        key: value.value
        for key, value in materialization.metadata.items()
        if isinstance(value.value, int)
    }
    assert figures["data_files_after"] < figures["data_files_before"]
    assert figures["files_deleted"] >= 1
    assert not orphan.exists()
    assert warehouse_rows(settings, counts) == rows_before
    assert_file_loaded_once(settings, "accounts.1.json", file)
    assert defs.resolve_schedule_def(LAKE_MAINTENANCE_SCHEDULE).cron_schedule == "17 3 * * *"


def test_a_missing_extension_package_is_named_with_the_version_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(
        ducklake_database.EXTENSION_PACKAGES, "ducklake", "duckdb-extension-not-installed"
    )
    settings = WarehouseSettings(
        backend="ducklake",
        ducklake_catalog=str(tmp_path / "catalog.ducklake"),
        ducklake_data_path=str(tmp_path / "data"),
    )
    missing = "pip install duckdb-extension-not-installed=="
    with pytest.raises(WarehouseLakeError, match=missing), open_warehouse(settings):
        pass


def test_an_unreachable_catalog_is_named_without_any_secret(
    s3_server: SeaweedS3, bucket: str, postgres_server: PostgresServer
) -> None:
    closed = f"postgresql://kmdagster@127.0.0.1:{postgres_server.port}/no_such_database"
    settings = KmConfig(
        s3=S3Settings(endpoint_url=s3_server.endpoint_url, region_name="us-east-1"),
        warehouse=WarehouseSettings(
            backend="ducklake", ducklake_catalog=closed, ducklake_data_path=f"s3://{bucket}/l/"
        ),
        sources=(SourceConfig(name="accounts", bucket=bucket, base_filename="accounts.json"),),
    ).warehouse
    with pytest.raises(WarehouseLakeError) as refused, open_warehouse(settings):
        pass
    message = str(refused.value)
    assert "no_such_database" in message and "ducklake_catalog" in message
    for secret in (ADMIN.secret_key, postgres_server.password):
        assert secret not in message


def open_at_once(settings: WarehouseSettings, start: threading.Barrier) -> int | None:
    """Open the lake as a run does, once every thread is ready to."""
    start.wait()
    with open_warehouse(settings) as warehouse:
        return warehouse.upgraded_from


def test_first_runs_of_sources_on_a_new_lake_at_once_all_open_it(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Three sources' first runs open a lake that does not exist yet at the same instant:
    one creates the catalog and the tables, the others wait for it and open the same lake
    (PostgreSQL refuses the loser's CREATE TABLE of a catalog table)."""
    for round_ in range(3):
        catalog = postgres_server.create_database(f"km_lake_new_{next(_lakes)}")
        settings = WarehouseSettings(
            backend="ducklake",
            ducklake_catalog=catalog,
            ducklake_data_path=str(tmp_path / f"lake-{round_}"),
        )
        start = threading.Barrier(3)
        with ThreadPoolExecutor(3) as pool:
            opened = [pool.submit(open_at_once, settings, start) for _ in range(3)]
            for future in opened:
                future.result(timeout=120)
        assert warehouse_rows(settings, "SELECT count(*) FROM km_import_files") == [(0,)]


@pytest.mark.slow
@pytest.mark.parametrize(("compression", "repeats"), [("plain", 27_000), ("gzip", 6_000)])
def test_a_file_on_a_lake_on_s3_resumes_across_budget_stopped_runs_every_line_once(
    lake_on_s3: KmConfig, s3: Any, bucket: str, compression: str, repeats: int
) -> None:
    """A file far bigger than DuckLake inlines in its catalog, so every chunk writes Parquet
    to S3 (12 MB plain, 2.7 MB of lines gzipped), imported in 256 KB chunks across runs
    each stopped by its budget. Its 300 property names are new to the lake: they are added
    apart from the chunk (``name_ids``), through a connection of their own that must write
    to S3 as the chunk's does."""
    file = km_file(seed=1, repeats=repeats, property_names=300)
    assert len(file.data) > 12_000_000 or compression == "gzip"
    key = "accounts.1.json" + (".gz" if compression == "gzip" else "")
    body = gzip.compress(file.data, compresslevel=1) if compression == "gzip" else file.data
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    runs = 0
    with open_warehouse(lake_on_s3.warehouse) as warehouse:
        while True:
            runs += 1
            report = run_import(
                s3, warehouse, bucket, key, chunk_bytes=262_144, time_budget_seconds=0.05
            )
            if report.ledger.is_complete:
                break
    assert runs > 1
    assert_file_loaded_once(lake_on_s3.warehouse, key, file)
    assert sum(k.endswith(".parquet") for k in keys_under(s3, bucket, "lake/")) > 10
