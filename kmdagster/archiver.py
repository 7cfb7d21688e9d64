"""Archive one fully imported S3 file: move it under completed_imports/ with its rejects.

No Dagster here: the archive asset calls ``archive_imported_file`` and reports what it
returns, as the import asset does with ``importer.import_file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kmdagster.config import SourceConfig
from kmdagster.s3.archive import archive_file
from kmdagster.s3.objects import S3File, head_file
from kmdagster.s3.rejects_file import rejects_key_for, write_rejects_file
from kmdagster.seams import crash_point
from kmdagster.stages import timed
from kmdagster.warehouse.file_rows import reject_batches
from kmdagster.warehouse.warehouse import LedgerRow, Warehouse


class NotImported(RuntimeError):
    """The file's latest version is not fully imported: nothing may be archived yet."""


@dataclass(frozen=True)
class ArchiveReport:
    """Where the imported version now is, and whether this call moved it."""

    ledger: LedgerRow
    archived_key: str
    rejects_key: str | None  # the rejects file beside it, when the file had rejected lines
    already_archived: bool  # moved by an earlier run: this one moved nothing


def archive_imported_file(
    client: Any, warehouse: Warehouse, source: SourceConfig, key: str
) -> ArchiveReport:
    """Move the imported version of ``s3://bucket/key`` to completed_imports/, idempotently.

    The rejects file is written, then the ledger records the archive key, before the
    original is deleted (``s3.archive``), so a kill anywhere is finished by the next
    call. A version archived before and no longer at the root is left as it is.
    """
    row = warehouse.latest_ledger_row(source.name, key)
    if row is None or not row.is_complete or row.completed_at is None:
        raise NotImported(f"s3://{source.bucket}/{key} is not fully imported; not archiving")
    at_root = head_file(client, source.bucket, key)
    gone = at_root is None or at_root.etag != row.file_etag
    if gone and row.archived_key is not None:
        return _report(row, row.archived_key, already_archived=True)

    def record(archived_key: str) -> None:
        if row.lines_rejected:
            batches = reject_batches(warehouse.database, row)
            with timed("rejects file"):
                write_rejects_file(
                    client, source.bucket, rejects_key_for(archived_key), row.file_etag, batches
                )
            crash_point("archive.rejects_written")
        warehouse.mark_archived(row, archived_key)

    imported = S3File(key=key, etag=row.file_etag, size=row.size_bytes)
    with timed("archive"):
        archived_key = archive_file(
            client, source.bucket, imported, row.completed_at, record=record
        )
    return _report(row, archived_key, already_archived=False)


def _report(row: LedgerRow, archived_key: str, already_archived: bool) -> ArchiveReport:
    rejects_key = rejects_key_for(archived_key) if row.lines_rejected else None
    return ArchiveReport(row, archived_key, rejects_key, already_archived)
