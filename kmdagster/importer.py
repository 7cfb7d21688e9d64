"""Import one S3 file into the warehouse, chunk by chunk, within a time budget.

No Dagster here: the import asset calls ``import_file`` and reports what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kmdagster.faults import crash_point
from kmdagster.format.split import split_km_lines
from kmdagster.storage.chunk_reader import FileChangedError, LineChunkReader
from kmdagster.storage.s3_objects import S3AccessError, head_file
from kmdagster.storage.warehouse import LedgerRow, Warehouse


@dataclass(frozen=True)
class ImportReport:
    """What one run did to one file version, and where the file now stands."""

    ledger: LedgerRow
    start_offset: int
    chunks: int
    bytes_read: int
    lines_read: int
    lines_loaded: int
    lines_rejected: int
    lines_blank: int
    seconds: float
    resume_hint: int | None  # the offset Dagster's last run recorded, if any
    stopped_on_budget: bool

    @property
    def complete(self) -> bool:
        return self.ledger.is_complete

    @property
    def hint_corrected(self) -> bool:
        return self.resume_hint is not None and self.resume_hint != self.start_offset


def import_file(
    *,
    client: Any,
    warehouse: Warehouse,
    source: str,
    bucket: str,
    key: str,
    chunk_bytes: int,
    time_budget_seconds: float,
    resume_hint: tuple[int, str] | None = None,
    now_epoch: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
    after_commit: Callable[[LedgerRow], None] | None = None,
) -> ImportReport:
    """Import ``s3://bucket/key`` from its committed offset until done or out of budget.

    The ledger's ``next_offset`` is the truth; ``resume_hint`` (offset, etag) from Dagster
    metadata is only compared with it, and only for the same file version.
    Every call commits at least one chunk unless the file is done.
    """
    started = clock()
    current = head_file(client, bucket, key)
    if current is None:
        raise S3AccessError(
            f"s3://{bucket}/{key} no longer exists; it was deleted or moved before its import "
            "finished. Nothing more is read from it; the next tick moves on to the next file"
        )
    row = warehouse.open_file(source, key, current.etag, current.size)
    start_offset = row.next_offset
    reader = LineChunkReader(client, bucket, key, current.etag, current.size, chunk_bytes)
    chunks = lines_read = loaded = rejected = blank = 0
    stopped_on_budget = False
    try:
        while not row.is_complete:
            chunk = reader.read_chunk(row.next_offset)
            crash_point("import.chunk_read")
            split = split_km_lines(chunk.data, row.lines_read + 1, int(now_epoch()))
            row = warehouse.commit_chunk(row, split, chunk.end)
            crash_point("import.chunk_committed")
            chunks += 1
            lines_read += split.lines_read
            loaded += split.loaded_lines
            rejected += split.rejected_lines
            blank += split.blank_lines
            if after_commit is not None:
                after_commit(row)
            if not row.is_complete and clock() - started >= time_budget_seconds:
                stopped_on_budget = True
                break
    except (FileChangedError, S3AccessError) as exc:
        # Deleted, replaced or unreadable mid-import: say so in the ledger (and status).
        warehouse.mark_failed(row, str(exc))
        raise
    return ImportReport(
        ledger=row,
        start_offset=start_offset,
        chunks=chunks,
        bytes_read=row.next_offset - start_offset,
        lines_read=lines_read,
        lines_loaded=loaded,
        lines_rejected=rejected,
        lines_blank=blank,
        seconds=clock() - started,
        resume_hint=resume_hint[0] if resume_hint and resume_hint[1] == row.file_etag else None,
        stopped_on_budget=stopped_on_budget,
    )
