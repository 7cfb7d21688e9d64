"""The embedded backend: one DuckDB file, one writing process at a time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from kmdagster.warehouse.database import WarehouseBusy, WarehouseSchemaError, sequence_ids
from kmdagster.warehouse.duckdb_connection import DuckDBConnection, memory_limit
from kmdagster.warehouse.ledger_writes import UPDATED_IN_PLACE
from kmdagster.warehouse.people import MERGED_IN_CHUNK
from kmdagster.warehouse.schema import KEYED_LAYOUT
from kmdagster.warehouse.waits import waiting_while_held

CHECKPOINT_THRESHOLD = "256MB"


def connect_waiting(
    path: Path, read_only: bool, lock_wait_seconds: float
) -> duckdb.DuckDBPyConnection:
    """Connect, waiting while another process holds the file (DuckDB admits one writer)."""
    try:
        return waiting_while_held(
            lambda: duckdb.connect(str(path), read_only=read_only),
            _is_lock_error,
            lock_wait_seconds,
        )
    except duckdb.IOException as exc:
        if "not a valid DuckDB database file" in str(exc):
            raise WarehouseSchemaError(
                f"the warehouse file {path} is not a DuckDB database; point "
                "warehouse.duckdb_path at a new path (kmdagster creates the file) or move "
                "that file away"
            ) from exc
        if "database file with version number" in str(exc):
            raise newer_storage_error(path) from exc
        if not _is_lock_error(exc):
            raise
        raise WarehouseBusy(
            f"the warehouse {path} was held by {lock_holder(str(exc))} for over "
            f"{lock_wait_seconds:.0f}s. A DuckDB file admits one process at a time, "
            "and any open connection holds it, read-only ones too (a notebook, the "
            "DuckDB CLI): close it, or query with `kmdagster sql`, which holds the "
            "file only while its query runs"
        ) from exc


def _is_lock_error(exc: Exception) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def newer_storage_error(path: Path) -> WarehouseSchemaError:
    """A file in a newer DuckDB's storage format: this DuckDB (pinned to the version its
    DuckLake and scanner extensions are built for) cannot read it, but can import it."""
    return WarehouseSchemaError(
        f"the warehouse file {path} was written by a newer DuckDB than the {duckdb.__version__} "
        "kmdagster runs (pinned to match its DuckLake extension). Move it: open it with the "
        "DuckDB that wrote it and run EXPORT DATABASE 'km_export', then point "
        "warehouse.duckdb_path at a new file and run `kmdagster import-warehouse km_export` "
        '(docs/deploy.md, "Moving a DuckDB warehouse between DuckDB versions")'
    )


def import_export(path: Path, export_dir: Path) -> None:
    """Make the DuckDB file ``path`` from ``export_dir``, written by any DuckDB's
    ``EXPORT DATABASE``: how a warehouse moves between DuckDB storage formats."""
    if not (export_dir / "schema.sql").is_file():
        raise WarehouseSchemaError(
            f"{export_dir} holds no schema.sql: give the folder EXPORT DATABASE wrote"
        )
    if path.exists() and not is_empty_file(path):
        raise WarehouseSchemaError(
            f"{path} already exists; point warehouse.duckdb_path at a new file to import into"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    quoted = str(export_dir).replace("'", "''")  # IMPORT DATABASE takes no parameters
    with duckdb.connect(str(path)) as con:
        con.execute(f"IMPORT DATABASE '{quoted}'")


def lock_holder(lock_error: str) -> str:
    """The process DuckDB's lock error names, with its command line when it is readable
    here (the same machine): an import run and an analyst's notebook read differently."""
    found = re.search(r"held in (.+?) \(PID (\d+)\)", lock_error)
    if found is None:
        return "another process"
    program, pid = found.groups()
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    except OSError:
        command = program
    return f"process {pid} ({command[:160] or program})"


def is_empty_file(path: Path) -> bool:
    """A file of no bytes (made by hand, or cut before DuckDB wrote its header)."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return False


class DuckDBDatabase(DuckDBConnection):
    """The warehouse in one DuckDB file, which one process at a time opens to write."""

    ledger_writes = UPDATED_IN_PLACE
    alias_merge = MERGED_IN_CHUNK
    schema_layout = KEYED_LAYOUT

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, writer: bool) -> None:
        super().__init__(con, str(path), writer)
        if writer:
            # Checkpoint (compress and rewrite) once per ~256 MB of WAL, not at every
            # chunk's commit: it halves the cost of loading, and the WAL is as durable.
            con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")

    @classmethod
    @contextmanager
    def open(
        cls, path: str | Path, read_only: bool, lock_wait_seconds: float
    ) -> Iterator[DuckDBDatabase]:
        path = Path(path)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
            if is_empty_file(path):  # holds nothing: DuckDB would refuse it as foreign
                path.unlink()
        con = connect_waiting(path, read_only=read_only, lock_wait_seconds=lock_wait_seconds)
        try:
            con.execute(f"SET memory_limit = '{memory_limit(read_only)}'")
            yield cls(con, path, writer=not read_only)
        finally:
            con.close()

    def autonomous(self) -> DuckDBDatabase:
        return DuckDBDatabase(self.cursor(), Path(self.location), writer=False)

    def serialize(self, name: str) -> None:
        """Nothing to wait for: a DuckDB file has one writing process."""

    def next_ids(self, sequence: str, count: int) -> list[int]:
        return sequence_ids(self, sequence, count)

    def checkpoint(self) -> None:
        self.connection.execute("CHECKPOINT")
