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

from kmdagster.config import S3Settings, WarehouseSettings
from kmdagster_dev.postgres import INSTALL_HINT, PostgresServer, postgres_bin_dir
from kmdagster_dev.seaweed import SeaweedS3, use_worker_ports
from kmdagster_tests import s3_calls
from kmdagster_tests.helpers import ADMIN, BACKENDS, READ_ONLY, SCOPED, WRITE_ONLY

pytest_plugins = ["kmdagster_tests.network_guard"]  # nothing reaches outside 127.0.0.1

s3_calls.install()  # before any client exists: every S3 call the product makes is judged
use_worker_ports(
    os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
)  # apart from the other workers'

_bucket_numbers = itertools.count(1)
_database_numbers = itertools.count(1)


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
    """A fresh, empty warehouse on each backend: a DuckDB file, a PostgreSQL database, a
    lake (a DuckDB-file catalog and a folder of Parquet files); ``ducklake_s3`` when asked
    for by name: a lake as deployed beyond one machine (a PostgreSQL catalog, its Parquet
    files under s3://BUCKET/lake/ in the test's bucket)."""
    if request.param == "duckdb":
        return WarehouseSettings(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    if request.param == "ducklake":
        return WarehouseSettings(
            backend="ducklake",
            ducklake_catalog=str(tmp_path / "lake" / "catalog.ducklake"),
            ducklake_data_path=str(tmp_path / "lake" / "data"),
        )
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database(f"km_test_{next(_database_numbers)}")
    if request.param == "ducklake_s3":
        s3_server: SeaweedS3 = request.getfixturevalue("s3_server")
        return WarehouseSettings(
            backend="ducklake",
            ducklake_catalog=url,
            ducklake_data_path=f"s3://{request.getfixturevalue('bucket')}/lake/",
            s3=S3Settings(endpoint_url=s3_server.endpoint_url, region_name="us-east-1"),
        )
    return WarehouseSettings(backend="postgres", postgres_url=url)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance
