"""Shared fixtures: one real SeaweedFS S3 server and one real PostgreSQL server per test
session; fresh buckets, DuckDB files and PostgreSQL databases per test."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, instance_for_test

from kmdagster.config import (
    KmConfig,
    S3Settings,
    SourceConfig,
    WarehouseSettings,
    config_yaml,
)
from kmdagster.importer import ImportHooks, ImportReport, ReadSizes, import_file
from kmdagster.storage.warehouse import Warehouse
from kmdagster_tests import s3_calls
from kmdagster_tests.km_files import KmFile
from kmdagster_tests.postgres import INSTALL_HINT, PostgresServer, postgres_bin_dir
from kmdagster_tests.seaweed import Identity, SeaweedS3, use_worker_ports

pytest_plugins = ["kmdagster_tests.network_guard"]  # nothing reaches outside 127.0.0.1

s3_calls.install()  # before any client exists: every S3 call the product makes is judged
use_worker_ports(os.environ.get("PYTEST_XDIST_WORKER"))  # apart from the other workers'

ADMIN = Identity(
    "kmdagster-admin",
    "KMADMIN" + secrets.token_hex(6).upper(),
    secrets.token_hex(20),
    ("Admin", "Read", "List", "Tagging", "Write"),
)
READ_ONLY = Identity(
    "kmdagster-readonly",
    "KMREAD" + secrets.token_hex(6).upper(),
    secrets.token_hex(20),
    ("Read", "List"),
)

WRITE_ONLY = Identity(  # may list and write but not read: GetObject/HeadObject are denied
    "kmdagster-writeonly",
    "KMWRITE" + secrets.token_hex(6).upper(),
    secrets.token_hex(20),
    ("List", "Write"),
)

# In the bucket QUARANTINE_BUCKET, may read every file but accounts.1.json: the file a
# source cannot import however often it tries.
QUARANTINE_BUCKET = "km-quarantine"
SCOPED = Identity(
    "kmdagster-scoped",
    "KMSCOPED" + secrets.token_hex(6).upper(),
    secrets.token_hex(20),
    (
        f"List:{QUARANTINE_BUCKET}",
        f"Write:{QUARANTINE_BUCKET}",
        f"Read:{QUARANTINE_BUCKET}/accounts.2*",
        f"Read:{QUARANTINE_BUCKET}/completed_imports/*",
    ),
)

_bucket_numbers = itertools.count(1)
_database_numbers = itertools.count(1)
BACKENDS = ("duckdb", "postgres")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(
        tmp_path_factory.mktemp("seaweedfs"), (ADMIN, READ_ONLY, WRITE_ONLY, SCOPED)
    ).start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    # The product reads credentials from the standard AWS chain, as in production.
    os.environ["AWS_ACCESS_KEY_ID"] = ADMIN.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = ADMIN.secret_key
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def product_s3_calls_are_granted() -> Iterator[None]:
    """Across the whole run, every S3 call the product makes is one its policy grants."""
    with s3_calls.recording_s3_calls() as recorder:
        yield
    problems = s3_calls.ungranted(recorder.calls)
    assert not problems, "S3 calls the documented IAM policy does not grant:\n" + "\n".join(
        problems
    )


@pytest.fixture
def s3(s3_server: SeaweedS3) -> Any:
    return s3_server.client(ADMIN)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"km-test-{next(_bucket_numbers)}-{secrets.token_hex(3)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def warehouse_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """Debian's PostgreSQL in a throwaway cluster; skipped, saying how to install it, when
    its binaries are missing (in CI, where `.ci/run` installs them, that is a failure)."""
    if postgres_bin_dir() is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    server = PostgresServer(tmp_path_factory.mktemp("postgres"), secrets.token_hex(16)).start()
    saved = os.environ.get("PGPASSWORD")
    # The product reads the password as in production: libpq takes it from PGPASSWORD.
    os.environ["PGPASSWORD"] = server.password
    try:
        yield server
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("PGPASSWORD", None)
        else:
            os.environ["PGPASSWORD"] = saved


@pytest.fixture(params=BACKENDS)
def warehouse_settings(request: pytest.FixtureRequest, tmp_path: Path) -> WarehouseSettings:
    """A fresh, empty warehouse on each backend: a DuckDB file, a PostgreSQL database."""
    if request.param == "duckdb":
        return WarehouseSettings(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database(f"km_test_{next(_database_numbers)}")
    return WarehouseSettings(backend="postgres", postgres_url=url)


def warehouse_rows(settings: WarehouseSettings, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` run read-only on the warehouse ``settings`` name."""
    with Warehouse.read_only(settings) as warehouse:
        assert warehouse is not None, "the warehouse has no tables yet"
        return warehouse.database.rows(sql)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


def assert_file_loaded_once(warehouse: WarehouseSettings, key: str, file: KmFile) -> None:
    """Every line of ``file`` (at ``key``) is in the warehouse once: each table holds its
    expected rows, none twice, and the ledger accounts for every line."""
    for table, identity, expected in (
        ("km_events", "line_no", file.events),
        ("km_properties", "(line_no, name)", file.properties),
        ("km_aliases", "line_no", file.aliases),
        ("km_rejects", "line_no", file.rejects),
    ):
        [(total, distinct)] = warehouse_rows(
            warehouse,
            f"SELECT count(*), count(DISTINCT {identity}) FROM {table} WHERE file_key = '{key}'",
        )
        assert total == distinct == expected, (key, table)
    [counts] = warehouse_rows(
        warehouse,
        "SELECT lines_read, lines_loaded, lines_rejected, lines_blank FROM km_import_files "
        f"WHERE file_key = '{key}'",
    )
    assert counts == (file.lines, file.valid_lines, file.rejects, file.blanks), key


def make_config(
    s3_server: SeaweedS3,
    bucket: str,
    warehouse: Path | WarehouseSettings,
    **source_overrides: Any,
) -> KmConfig:
    """One source ``accounts`` in ``bucket``; ``warehouse`` is a DuckDB path or settings."""
    source = SourceConfig(
        name=source_overrides.pop("name", "accounts"),
        bucket=bucket,
        base_filename=source_overrides.pop("base_filename", "accounts.json"),
        **source_overrides,
    )
    return KmConfig(
        s3=S3Settings(endpoint_url=s3_server.endpoint_url, region_name="us-east-1"),
        warehouse=warehouse
        if isinstance(warehouse, WarehouseSettings)
        else WarehouseSettings(duckdb_path=str(warehouse)),
        sources=(source,),
    )


def write_config(path: Path, config: KmConfig) -> Path:
    """Write ``config`` as the YAML file a separate process (or the CLI) loads."""
    path.write_text(config_yaml(config))
    return path


def run_import(
    client: Any, warehouse: Any, bucket: str, key: str, chunk_bytes: int, **options: Any
) -> ImportReport:
    """``import_file`` for source ``accounts`` with a budget no test run reaches.

    ``options`` are the source's settings, the read sizes and the hooks, by field name.
    """
    source = SourceConfig(
        name="accounts", bucket=bucket, base_filename="accounts.json", chunk_bytes=chunk_bytes
    ).model_copy(  # unvalidated: a budget of 0 (stop after the first chunk) is a test's
        update={"time_budget_seconds": options.pop("time_budget_seconds", 600.0)}
    )
    sizes = {f: options.pop(f) for f in ReadSizes.__dataclass_fields__ if f in options}
    hooks = {f: options.pop(f) for f in ImportHooks.__dataclass_fields__ if f in options}
    return import_file(
        client,
        warehouse,
        source,
        key,
        sizes=ReadSizes(**sizes),
        hooks=ImportHooks(**hooks),
        **options,
    )
