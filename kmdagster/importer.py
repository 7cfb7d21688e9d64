"""Import one S3 file into the warehouse, chunk by chunk, within a time budget.

No Dagster here: the import asset calls ``import_file`` and reports what it returns.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kmdagster.faults import crash_point
from kmdagster.format.lines import count_lines
from kmdagster.format.split import SplitLines, split_km_lines
from kmdagster.storage.chunk_reader import Chunk, FileChangedError, LineChunkReader
from kmdagster.storage.s3_objects import S3AccessError, head_file
from kmdagster.storage.warehouse import LedgerRow, Warehouse

SPLIT_WORKERS = 2  # chunks split at once: one per core of the machine it was tuned on


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
    totals = _Totals()
    stopped_on_budget = False
    # The stages overlap on two cores: the next S3 read (I/O), two chunks split at once
    # (polars releases the GIL) and the previous chunk's DuckDB commit. Commits stay strictly in
    # order, one transaction each, so the exactly-once argument is unchanged.
    readers = ThreadPoolExecutor(1, thread_name_prefix="kmdagster-read")
    splitters = ThreadPoolExecutor(SPLIT_WORKERS, thread_name_prefix="kmdagster-split")
    committer = ThreadPoolExecutor(1, thread_name_prefix="kmdagster-commit")
    in_flight: tuple[Future[LedgerRow], SplitLines] | None = None
    try:
        if not row.is_complete:
            for chunk, split in _read_and_split(reader, row, now_epoch, splitters, readers):
                if in_flight is not None:
                    row = _finish(in_flight, totals, after_commit)
                    in_flight = None
                    if clock() - started >= time_budget_seconds:
                        stopped_on_budget = True  # this chunk's split is dropped, not lost
                        break
                in_flight = (committer.submit(warehouse.commit_chunk, row, split, chunk.end), split)
            if in_flight is not None:
                row = _finish(in_flight, totals, after_commit)
                in_flight = None
    except (FileChangedError, S3AccessError) as exc:
        # Deleted, replaced or unreadable mid-import: say so in the ledger (and status).
        row = _settle(in_flight, row)
        warehouse.mark_failed(row, str(exc))
        raise
    finally:
        _settle(in_flight, row)  # never leave a commit running on the connection
        committer.shutdown(wait=True)
        splitters.shutdown(wait=False, cancel_futures=True)
        readers.shutdown(wait=False, cancel_futures=True)  # a read-ahead no longer needed
    return ImportReport(
        ledger=row,
        start_offset=start_offset,
        chunks=totals.chunks,
        bytes_read=row.next_offset - start_offset,
        lines_read=totals.lines_read,
        lines_loaded=totals.loaded,
        lines_rejected=totals.rejected,
        lines_blank=totals.blank,
        seconds=clock() - started,
        resume_hint=resume_hint[0] if resume_hint and resume_hint[1] == row.file_etag else None,
        stopped_on_budget=stopped_on_budget,
    )


@dataclass
class _Totals:
    chunks: int = 0
    lines_read: int = 0
    loaded: int = 0
    rejected: int = 0
    blank: int = 0

    def add(self, split: SplitLines) -> None:
        self.chunks += 1
        self.lines_read += split.lines_read
        self.loaded += split.loaded_lines
        self.rejected += split.rejected_lines
        self.blank += split.blank_lines


def _read_and_split(
    reader: LineChunkReader,
    row: LedgerRow,
    now_epoch: Callable[[], float],
    splitters: ThreadPoolExecutor,
    readers: ThreadPoolExecutor,
) -> Iterator[tuple[Chunk, SplitLines]]:
    """Chunks from the ledger's offset, in order, split ``SPLIT_WORKERS`` at a time.

    The next chunk is always being read (in ``readers``) while earlier ones are split
    and committed; a chunk's first line number comes from counting the newlines of the
    chunks before it, so splits need not wait for one another.
    """
    line_no = row.lines_read + 1
    # An empty file still gets its one (empty) chunk, which completes it.
    next_read: Future[Chunk] | None = readers.submit(reader.read_chunk, row.next_offset)
    window: deque[tuple[Chunk, int, Future[SplitLines]]] = deque()
    while next_read is not None or window:
        while next_read is not None and len(window) < SPLIT_WORKERS:
            chunk = next_read.result()
            crash_point("import.chunk_read")
            more = chunk.end < reader.size
            next_read = readers.submit(reader.read_chunk, chunk.end) if more else None
            lines = count_lines(chunk.data)
            split = splitters.submit(split_km_lines, chunk.data, line_no, int(now_epoch()))
            window.append((chunk, lines, split))
            line_no += lines
        chunk, lines, split = window.popleft()
        result = split.result()
        if result.lines_read != lines:  # would shift every later line number
            raise RuntimeError(f"split read {result.lines_read} lines where {lines} were counted")
        yield chunk, result


def _finish(
    in_flight: tuple[Future[LedgerRow], SplitLines],
    totals: _Totals,
    after_commit: Callable[[LedgerRow], None] | None,
) -> LedgerRow:
    """Wait for a chunk's commit and account for it."""
    future, split = in_flight
    row = future.result()
    crash_point("import.chunk_committed")
    totals.add(split)
    if after_commit is not None:
        after_commit(row)
    return row


def _settle(in_flight: tuple[Future[LedgerRow], SplitLines] | None, row: LedgerRow) -> LedgerRow:
    """The ledger row after a commit still in flight, whatever became of it."""
    if in_flight is None:
        return row
    try:
        return in_flight[0].result()
    except Exception:
        return row
