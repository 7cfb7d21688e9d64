"""Every warehouse backend and what it can do: the one module that reads
``warehouse.backend``. The rest of kmdagster asks the ``Backend`` of its settings
(``backend_of``) to open the warehouse, how many processes may write at once, and what
else the backend brings, and never compares the name itself.

- ``duckdb``: an embedded file, one writing process at a time; a file can be made from
  another DuckDB version's export.
- ``postgres``: a server, any number of writers.
- ``ducklake``: Parquet files and a catalog, maintained on a schedule; one writer at a
  time when the catalog is a DuckDB file, any number on a PostgreSQL catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from kmdagster.config import WarehouseSettings
from kmdagster.urls import is_postgres_url
from kmdagster.warehouse.duckdb_database import import_export
from kmdagster.warehouse.ducklake_database import DuckLakeDatabase, attach_statements
from kmdagster.warehouse.postgres_database import PostgresDatabase
from kmdagster.warehouse.schema import has_schema
from kmdagster.warehouse.warehouse import LOCK_WAIT_SECONDS, DuckDBWarehouse, Warehouse

# A reader (status, a tick, a query) waits this long by default for a writer's lock.
READ_WAIT_SECONDS = 10.0

Writer = Callable[[WarehouseSettings, float], AbstractContextManager[Warehouse]]
Reader = Callable[[WarehouseSettings, float], AbstractContextManager[Warehouse | None]]


@dataclass(frozen=True)
class Backend:
    """What one backend can do."""

    name: str
    # Open to write, creating the tables if needed, waiting up to the seconds given for a
    # lock another process holds.
    writer: Writer
    # Open to read, never creating anything; None when there are no tables yet.
    reader: Reader
    # Whether one process at a time may write: the import runs of every source then take
    # turns (the run queue's limit on ``runs.ONE_WRITER_TAG``).
    one_writer: Callable[[WarehouseSettings], bool]
    # What a user looks at to find the warehouse: a file, a catalog, a database.
    location: Callable[[WarehouseSettings], str]
    # The bytes it takes on disk (the benchmarks' storage figures).
    stored_bytes: Callable[[WarehouseSettings], int]
    # Brings a maintenance schedule (``defs/lake_maintenance.py``).
    maintained: bool = False
    # The SQL that attaches it in another DuckDB session (``kmdagster sql --attach``).
    attach_statements: Callable[[WarehouseSettings], str] | None = None
    # Makes its file from a folder another DuckDB version's EXPORT DATABASE wrote
    # (``kmdagster import-warehouse``).
    import_export: Callable[[Path, Path], None] | None = None


@contextmanager
def _duckdb_writer(settings: WarehouseSettings, wait: float) -> Iterator[Warehouse]:
    with DuckDBWarehouse.connect(settings.duckdb_path, wait) as warehouse:
        yield warehouse


@contextmanager
def _duckdb_reader(settings: WarehouseSettings, wait: float) -> Iterator[Warehouse | None]:
    with DuckDBWarehouse.reader(settings.duckdb_path, wait) as warehouse:
        yield warehouse


@contextmanager
def _postgres_writer(settings: WarehouseSettings, _wait: float) -> Iterator[Warehouse]:
    assert settings.postgres_url is not None  # the configuration requires it
    with PostgresDatabase.open(settings.postgres_url) as database:
        yield Warehouse(database)


@contextmanager
def _postgres_reader(settings: WarehouseSettings, _wait: float) -> Iterator[Warehouse | None]:
    assert settings.postgres_url is not None
    with PostgresDatabase.open(settings.postgres_url) as database:
        database.execute("SET default_transaction_read_only = on")
        yield Warehouse(database, writer=False) if has_schema(database) else None


@contextmanager
def _lake_writer(settings: WarehouseSettings, wait: float) -> Iterator[Warehouse]:
    with DuckLakeDatabase.attach(settings, False, wait) as database:
        yield Warehouse(database)


@contextmanager
def _lake_reader(settings: WarehouseSettings, wait: float) -> Iterator[Warehouse | None]:
    with DuckLakeDatabase.reader(settings, wait) as lake:
        yield Warehouse(lake, writer=False) if lake and has_schema(lake) else None


def _files_bytes(paths: Iterable[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file())


def _duckdb_bytes(settings: WarehouseSettings) -> int:
    return _files_bytes([Path(settings.duckdb_path), Path(settings.duckdb_path + ".wal")])


def _postgres_bytes(settings: WarehouseSettings) -> int:
    assert settings.postgres_url is not None
    with PostgresDatabase.open(settings.postgres_url) as database:
        [(size,)] = database.rows("SELECT pg_database_size(current_database())")
    return int(size)


def _lake_bytes(settings: WarehouseSettings) -> int:
    """The catalog file and the local data folder (not a PostgreSQL catalog or S3's)."""
    data = Path(settings.ducklake_data_path)
    return _files_bytes([Path(settings.ducklake_catalog), *data.rglob("*")])


BACKENDS = {
    backend.name: backend
    for backend in (
        Backend(
            name="duckdb",
            writer=_duckdb_writer,
            reader=_duckdb_reader,
            one_writer=lambda settings: True,
            location=lambda settings: settings.duckdb_path,
            stored_bytes=_duckdb_bytes,
            import_export=import_export,
        ),
        Backend(
            name="postgres",
            writer=_postgres_writer,
            reader=_postgres_reader,
            one_writer=lambda settings: False,
            location=lambda settings: settings.postgres_url or "the PostgreSQL database",
            stored_bytes=_postgres_bytes,
        ),
        Backend(
            name="ducklake",
            writer=_lake_writer,
            reader=_lake_reader,
            one_writer=lambda settings: not is_postgres_url(settings.ducklake_catalog),
            location=lambda settings: settings.ducklake_catalog,
            stored_bytes=_lake_bytes,
            maintained=True,
            attach_statements=attach_statements,
        ),
    )
}


def backend_of(settings: WarehouseSettings) -> Backend:
    return BACKENDS[settings.backend]


def open_warehouse(
    settings: WarehouseSettings, lock_wait_seconds: float = LOCK_WAIT_SECONDS
) -> AbstractContextManager[Warehouse]:
    """The configured warehouse open for writing, its tables created if needed."""
    return backend_of(settings).writer(settings, lock_wait_seconds)


def read_warehouse(
    settings: WarehouseSettings, lock_wait_seconds: float = READ_WAIT_SECONDS
) -> AbstractContextManager[Warehouse | None]:
    """The configured warehouse open to read; None when it has no tables yet. Never
    creates anything, so previews and status reports leave no trace. Raises
    ``WarehouseBusy`` when an import holds a DuckDB file past ``lock_wait_seconds``."""
    return backend_of(settings).reader(settings, lock_wait_seconds)


def one_writer(settings: WarehouseSettings) -> bool:
    """Whether the import runs of every source take turns writing the warehouse."""
    return backend_of(settings).one_writer(settings)
