"""What many test modules share besides fixtures: the S3 identities the test server
knows, the configuration a test writes, and the checks that a file loaded once."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from kmdagster import seams
from kmdagster.config import (
    KmConfig,
    S3Settings,
    SourceConfig,
    WarehouseSettings,
    config_yaml,
)
from kmdagster.defs.naming import SourceNames
from kmdagster.importer import ImportReport, import_file
from kmdagster.warehouse.backends import read_warehouse
from kmdagster.warehouse.file_rows import ROW_IDENTITY
from kmdagster.warehouse.warehouse import PieceEnd
from kmdagster_dev.km_files import KmFile
from kmdagster_dev.seaweed import Identity, SeaweedS3

BACKENDS = ("duckdb", "postgres", "ducklake")
ACCOUNTS = SourceNames("accounts")  # the Dagster names of the source most tests configure

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


def warehouse_rows(settings: WarehouseSettings, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` run read-only on the warehouse ``settings`` name."""
    with read_warehouse(settings) as warehouse:
        assert warehouse is not None, "the warehouse has no tables yet"
        return warehouse.database.rows(sql)


def assert_file_loaded_once(warehouse: WarehouseSettings, key: str, file: KmFile) -> None:
    """Every line of ``file`` (at ``key``) is in the warehouse once: each table holds its
    expected rows, none twice, and the ledger accounts for every line."""
    for table, expected in file.rows.items():
        [(total, distinct)] = warehouse_rows(
            warehouse,
            f"SELECT count(*), count(DISTINCT ({ROW_IDENTITY[table]})) FROM {table} "
            f"WHERE file_key = '{key}'",
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

    ``options`` are the source's settings, and the import's seams, by field name; the
    import is recorded as run ``options["run_id"]`` (``test-import`` unless given).
    """
    budget = options.pop("time_budget_seconds", 600.0)
    settings = {f: options.pop(f) for f in SourceConfig.model_fields if f in options}
    source = SourceConfig(
        name="accounts",
        bucket=bucket,
        base_filename="accounts.json",
        chunk_bytes=chunk_bytes,
        **settings,
    ).model_copy(  # unvalidated: a budget of 0 (stop after the first chunk) is a test's
        update={"time_budget_seconds": budget}
    )
    injected = {f: options.pop(f) for f in seams.Seams.__dataclass_fields__ if f in options}
    with seams.injected(**injected):
        run_id = options.pop("run_id", "test-import")
        return import_file(client, warehouse, source, key, run_id, **options)


def plain_piece_end(offset: int, size_bytes: int) -> PieceEnd:
    """Where a piece ends at ``offset`` in a plain (uncompressed) file of ``size_bytes``."""
    return PieceEnd(offset=offset, last=offset >= size_bytes, read_offset=offset)
