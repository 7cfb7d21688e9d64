"""The lakehouse backend: DuckLake, tables as Parquet files in a folder or on S3.

A DuckDB connection in memory attaches the lake: its catalog (a DuckDB file for one
machine, or a PostgreSQL database for many writers on many machines) and its data path
(a local folder, or ``s3://bucket/prefix/`` with kmdagster's S3 settings and the standard
AWS credential chain). Statements, Arrow in and out, and transactions are DuckDB's own
(``DuckDBConnection``); what differs is how the lake is opened, that DuckLake has no
sequences or keys (ids come from ``km_sequences``), that two writers' commits that
touch the same data may conflict, which DuckLake reports and ``transaction`` retries. So
the ledger is appended to as revisions and alias groups are merged after each chunk's
commit (never a delete in a chunk's transaction).

The extensions are loaded from the files their PyPI packages ship; nothing is downloaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
from boto3.session import Session

from kmdagster.config import S3Settings, WarehouseSettings
from kmdagster.urls import is_postgres_url, without_password
from kmdagster.warehouse.database import (
    WarehouseBusy,
    WarehouseConflict,
    WarehouseSchemaError,
    WarehouseUnavailable,
)
from kmdagster.warehouse.duckdb_connection import DuckDBConnection, memory_limit
from kmdagster.warehouse.lake_schema import LAKE_LAYOUT
from kmdagster.warehouse.ledger_writes import APPENDED_REVISIONS
from kmdagster.warehouse.people import MERGED_APART
from kmdagster.warehouse.waits import LOCK_PAUSE_SECONDS, waiting_while_held

LAKE = "km_lake"  # the lake's name in the connection; `kmdagster sql` makes it the default
# extension -> the PyPI package that ships its file (pinned with DuckDB in pyproject.toml)
EXTENSION_PACKAGES = {
    "ducklake": "duckdb-extension-ducklake",
    "postgres_scanner": "duckdb-extension-postgres-scanner",
    "httpfs": "duckdb-extension-httpfs",
}
_CATALOG_RACE_PAUSE_SECONDS = 0.2


class WarehouseLakeError(WarehouseUnavailable):
    """The lake's catalog or data path cannot be reached, or an extension is missing."""


class LakeNotCreated(WarehouseLakeError):
    """A read-only attach found no lake in the catalog: no import has created it yet."""


def extension_file(extension: str) -> Path:
    """The extension file the package of ``extension`` ships for this DuckDB version."""
    package = EXTENSION_PACKAGES[extension]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise WarehouseLakeError(
            f"the DuckLake warehouse needs the {extension} extension: pip install "
            f"{package}=={duckdb.__version__}"
        ) from None
    assert module.__file__ is not None
    found = Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = found / f"{extension}.duckdb_extension"
    if not path.is_file():
        raise WarehouseLakeError(
            f"{package} holds no {extension} extension for DuckDB {duckdb.__version__} "
            f"(looked for {path}): install {package}=={duckdb.__version__}"
        )
    return path


def _quoted(text: str) -> str:
    """``text`` as an SQL string literal (ATTACH and CREATE SECRET take no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def s3_secret_statement(s3: S3Settings | None) -> str:
    """A temporary DuckDB secret for the data path on S3, from the AWS credential chain
    boto3 reads (environment, profile, instance role). It lives in this connection only
    and is never printed."""
    settings = s3 or S3Settings()
    session = Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise WarehouseLakeError(
            "the lake's data path is on S3 but no AWS credentials were found: set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with a role"
        )
    frozen = credentials.get_frozen_credentials()
    options = [
        "TYPE s3",
        f"KEY_ID {_quoted(frozen.access_key)}",
        f"SECRET {_quoted(frozen.secret_key)}",
        f"REGION {_quoted(settings.region_name or session.region_name or 'us-east-1')}",
    ]
    if frozen.token:
        options.append(f"SESSION_TOKEN {_quoted(frozen.token)}")
    if settings.endpoint_url:
        endpoint = urlsplit(settings.endpoint_url)
        options += [
            f"ENDPOINT {_quoted(endpoint.netloc)}",
            "URL_STYLE 'path'",  # S3-compatible servers (SeaweedFS, MinIO) take paths
            f"USE_SSL {'true' if endpoint.scheme == 'https' else 'false'}",
        ]
    return f"CREATE OR REPLACE TEMPORARY SECRET km_lake_data ({', '.join(options)})"


class DuckLakeDatabase(DuckDBConnection):
    sql_skip_duplicates = ""  # no keys in a lake: see ``next_ids``
    ledger_writes = APPENDED_REVISIONS
    alias_merge = MERGED_APART
    schema_layout = LAKE_LAYOUT

    @classmethod
    @contextmanager
    def attach(
        cls, settings: WarehouseSettings, read_only: bool, lock_wait_seconds: float
    ) -> Iterator[DuckLakeDatabase]:
        con = attach_lake(settings, read_only, lock_wait_seconds)
        try:
            yield cls(con, lake_location(settings), writer=not read_only)
        finally:
            con.close()

    @classmethod
    @contextmanager
    def reader(
        cls, settings: WarehouseSettings, lock_wait_seconds: float
    ) -> Iterator[DuckLakeDatabase | None]:
        """The lake attached read-only; None when no import has created it yet."""
        if not lake_exists(settings):
            yield None
            return
        try:
            con = attach_lake(settings, True, lock_wait_seconds)
        except LakeNotCreated:
            yield None
            return
        try:
            yield cls(con, lake_location(settings), writer=False)
        finally:
            con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = self.connection.cursor()
        cursor.execute(f"USE {LAKE}")  # a cursor starts in the in-memory database
        return cursor

    def serialize(self, name: str) -> None:
        """Nothing to wait for: of two writers' commits, the second conflicts and is
        tried again (``transaction``)."""

    def autonomous(self) -> DuckLakeDatabase:
        return DuckLakeDatabase(self.cursor(), self.location, writer=False)

    def commit(self) -> None:
        try:
            self.connection.commit()
        except duckdb.TransactionException as exc:
            # DuckLake retried the commit itself; what is left is a real conflict with a
            # transaction that committed first (both changed the same data). The
            # transaction is gone: nothing of it is in the lake.
            raise WarehouseConflict(
                f"the lake {self.location} refused a commit that conflicts with another "
                f"writer's: {str(exc).strip().splitlines()[-1][:300]}"
            ) from exc

    def rollback(self) -> None:
        # A failed commit has already ended the transaction.
        with suppress(duckdb.TransactionException):
            self.connection.rollback()

    def next_ids(self, sequence: str, count: int) -> list[int]:
        # No sequences in DuckLake: a counter row per sequence, moved in the open
        # transaction. Two writers that move it at once conflict, so one of them retries
        # (``transaction``): ids are never handed out twice.
        self.execute(
            "UPDATE km_sequences SET last_value = last_value + $1 WHERE name = $2",
            [count, sequence],
        )
        [(last,)] = self.rows("SELECT last_value FROM km_sequences WHERE name = $1", [sequence])
        return list(range(last - count + 1, last + 1))

    def checkpoint(self) -> None:
        """Nothing to fold: each commit wrote its Parquet files. Merging small files is
        the maintenance job's work (``lake_maintenance.py``)."""


def lake_exists(settings: WarehouseSettings) -> bool:
    """Whether the lake may hold tables: its catalog file is there, or it is on PostgreSQL
    (which tells only once attached)."""
    catalog = settings.ducklake_catalog
    return is_postgres_url(catalog) or Path(catalog).is_file()


def lake_location(settings: WarehouseSettings) -> str:
    catalog = without_password(settings.ducklake_catalog)
    return f"ducklake:{catalog} (data {settings.ducklake_data_path})"


def _extensions(settings: WarehouseSettings) -> list[str]:
    needed = ["ducklake"]
    if is_postgres_url(settings.ducklake_catalog):
        needed.append("postgres_scanner")
    if settings.ducklake_data_path.startswith("s3://"):
        needed.append("httpfs")
    return needed


def _attach_target(settings: WarehouseSettings) -> str:
    catalog = settings.ducklake_catalog
    return f"ducklake:postgres:{catalog}" if is_postgres_url(catalog) else f"ducklake:{catalog}"


def attach_statements(settings: WarehouseSettings) -> str:
    """The SQL that attaches the lake read-only in any DuckDB of the same version (the
    CLI, a notebook): what ``kmdagster sql --attach`` prints. An S3 secret is left for the
    reader to create with their own credentials; none is printed."""
    lines = [f"LOAD {_quoted(str(extension_file(name)))};" for name in _extensions(settings)]
    if settings.ducklake_data_path.startswith("s3://"):
        lines.append(
            "-- the data is on S3: CREATE SECRET (TYPE s3, KEY_ID '...', SECRET '...', "
            "REGION '...'[, ENDPOINT 'host:port', URL_STYLE 'path', USE_SSL false]);"
        )
    data_path = _quoted(settings.ducklake_data_path)
    target = _quoted(without_password(_attach_target(settings)))
    lines += [f"ATTACH {target} AS {LAKE} (DATA_PATH {data_path}, READ_ONLY);", f"USE {LAKE};"]
    return "\n".join(lines)


def attach_lake(
    settings: WarehouseSettings, read_only: bool, lock_wait_seconds: float
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake attached as ``km_lake`` and in use."""
    data_path = settings.ducklake_data_path
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    try:
        con.execute(f"SET memory_limit = '{memory_limit(read_only)}'")
        con.execute("SET TimeZone = 'UTC'")
        for extension in _extensions(settings):
            con.execute(f"LOAD {_quoted(str(extension_file(extension)))}")
        if data_path.startswith("s3://"):
            con.execute(s3_secret_statement(settings.s3))
            # Upload buffers are the largest file's size over S3's 10,000 parts: 800 GB by
            # default gives 80 MB buffers, over the memory limit. A data file is one piece.
            # GLOBAL: a plain SET holds for this cursor only, and the cursors that add new
            # names or merge aliases apart from the chunk write Parquet to S3 too.
            con.execute("SET GLOBAL s3_uploader_max_filesize = '50GB'")
        else:
            Path(data_path).mkdir(parents=True, exist_ok=True)
        if not is_postgres_url(settings.ducklake_catalog):
            Path(settings.ducklake_catalog).parent.mkdir(parents=True, exist_ok=True)
        options = [f"DATA_PATH {_quoted(data_path)}"]
        if read_only:
            options.append("READ_ONLY")
        _attach_waiting(con, _attach_target(settings), options, settings, lock_wait_seconds)
        con.execute(f"USE {LAKE}")
    except BaseException:
        con.close()
        raise
    return con


def _lost_the_race_to_create(error: str, settings: WarehouseSettings) -> bool:
    """Whether ATTACH failed because another process created the same PostgreSQL catalog
    tables in the same instant (PostgreSQL refuses the second CREATE TABLE of a name)."""
    return (
        is_postgres_url(settings.ducklake_catalog)
        and "Failed to initialize DuckLake" in error
        and ("duplicate key value" in error or "already exists" in error)
    )


def _attach_waiting(
    con: duckdb.DuckDBPyConnection,
    target: str,
    options: list[str],
    settings: WarehouseSettings,
    lock_wait_seconds: float,
) -> None:
    """ATTACH, waiting while another process holds a DuckDB-file catalog (one process at a
    time, as for the DuckDB warehouse) or creates the same PostgreSQL catalog."""
    where = lake_location(settings)
    on_postgres = is_postgres_url(settings.ducklake_catalog)

    def catalog_file_held(exc: Exception) -> bool:
        return not on_postgres and "lock" in str(exc).lower()

    def is_held(exc: Exception) -> bool:
        return isinstance(exc, duckdb.Error) and (
            catalog_file_held(exc) or _lost_the_race_to_create(str(exc), settings)
        )

    try:
        waiting_while_held(
            lambda: con.execute(f"ATTACH {_quoted(target)} AS {LAKE} ({', '.join(options)})"),
            is_held,
            lock_wait_seconds,
            # A PostgreSQL catalog another process is creating is ready within moments.
            pause=_CATALOG_RACE_PAUSE_SECONDS if on_postgres else LOCK_PAUSE_SECONDS,
        )
    except duckdb.Error as exc:
        text = str(exc)
        if catalog_file_held(exc):
            raise WarehouseBusy(
                f"the lake catalog {settings.ducklake_catalog} was held by another process "
                f"for over {lock_wait_seconds:.0f}s. A DuckDB-file catalog admits one "
                "process at a time: query with `kmdagster sql` (held only while its query "
                "runs), or put the catalog on PostgreSQL for many writers and readers"
            ) from exc
        if "creating a new DuckLake is explicitly disabled" in text:
            raise LakeNotCreated(f"the lake {where} has not been created yet") from exc
        if "not a valid DuckDB database file" in text:
            raise WarehouseSchemaError(
                f"the lake catalog {settings.ducklake_catalog} is not a DuckDB file; point "
                "warehouse.ducklake_catalog at a new path or move that file away"
            ) from exc
        raise WarehouseLakeError(
            f"cannot attach the lake {where}: "
            f"{without_password(text.strip().splitlines()[0])[:400]}; check "
            "warehouse.ducklake_catalog and ducklake_data_path (and PGPASSWORD for a "
            "PostgreSQL catalog)"
        ) from exc
