"""Import one S3 file into the warehouse, chunk by chunk, within a time budget.

No Dagster here: a run's unit of one file (``defs/file_import/unit.py``) calls
``import_file`` and reports what it returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from kmdagster.config import SourceConfig
from kmdagster.km_format.lines import count_lines
from kmdagster.km_format.split import SplitLines, split_km_lines
from kmdagster.s3.objects import S3AccessError, S3File, compression_of, head_file
from kmdagster.s3.piece_reader import (
    PIECE_BYTES,
    REQUEST_BYTES,
    FileChangedError,
    Piece,
    PieceReader,
)
from kmdagster.seams import after_commit, crash_point, hold_point
from kmdagster.seams import current as current_seams
from kmdagster.stages import timed
from kmdagster.warehouse.piece_rows import PieceRows
from kmdagster.warehouse.warehouse import LedgerRow, PieceEnd, Warehouse, WarehouseConflict

SPLIT_WORKERS = 2  # pieces split at once: one per core of the machine it was tuned on
# Chunks a lake refused in one run (each read again) before the run gives up; the next
# run resumes from the committed offset.
MAX_CHUNK_CONFLICTS = 20
PIECES_AHEAD = SPLIT_WORKERS + 1  # splitting, or split and waiting while another is inserted


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
    already_imported: bool = False  # complete before this run: it read and loaded nothing
    chunks_read_again: int = 0  # commits a lake refused for another writer's, each retried

    @property
    def complete(self) -> bool:
        return self.ledger.is_complete

    @property
    def lines_per_second(self) -> float:
        return round(self.lines_read / self.seconds, 1) if self.seconds > 0 else 0.0

    @property
    def hint_corrected(self) -> bool:
        return self.resume_hint is not None and self.resume_hint != self.start_offset


def import_file(
    client: Any,
    warehouse: Warehouse,
    source: SourceConfig,
    key: str,
    run_id: str,
    resume_hint: tuple[int, str] | None = None,
    budget_seconds: float | None = None,
) -> ImportReport:
    """Import ``s3://bucket/key`` from its committed offset until done or out of budget.

    The ledger's ``next_offset`` is the truth; ``resume_hint`` (offset, etag) from Dagster
    metadata is only compared with it, and only for the same file version. ``run_id``
    (the Dagster run's, or a name for the import) is recorded with each chunk it commits,
    which is how the quarantine rule tells a run that advanced the file from one that did
    not.
    ``budget_seconds`` is what is left of the run's budget when the run imports more than
    one file (the source's ``time_budget_seconds`` otherwise).
    Every call commits at least one chunk unless the file is done. Its clock and read
    sizes are ``kmdagster.seams``' to change, and a test may act after each commit there.
    """
    seams = current_seams()
    clock, bucket, chunk_bytes = seams.clock, source.bucket, source.chunk_bytes
    budget = source.time_budget_seconds if budget_seconds is None else budget_seconds
    started = clock()
    current = head_file(client, bucket, key)
    if current is None:
        imported = warehouse.latest_ledger_row(source.name, key)
        if imported is not None and imported.is_complete:  # a re-run after its archive
            return _nothing_to_do(imported, clock() - started)
        raise S3AccessError(
            f"s3://{bucket}/{key} no longer exists; it was deleted or moved before its import "
            "finished. Nothing more is read from it; the next tick moves on to the next file"
        )
    row = opened = warehouse.open_file(source.name, key, current.etag, current.size)
    if opened.is_complete:  # a re-run, or a file re-uploaded with content already imported
        return _nothing_to_do(opened, clock() - started)
    start_offset = row.next_offset
    # Pieces are read in order from streaming GETs; a chunk is the pieces up to ``chunk_bytes``.
    piece_bytes = min(chunk_bytes, seams.piece_bytes or PIECE_BYTES)
    chunks = conflicts = 0
    stopped_on_budget = False
    # The stages overlap on two cores: the next S3 read (I/O), two pieces split at once
    # (polars releases the GIL) and the insert of the piece before them (DuckDB releases it
    # too). A chunk's pieces are inserted in one transaction with its ledger row, chunks
    # strictly in order, so the exactly-once argument is unchanged.
    readers = ThreadPoolExecutor(1, thread_name_prefix="kmdagster-read")
    splitters = ThreadPoolExecutor(SPLIT_WORKERS, thread_name_prefix="kmdagster-split")

    def pieces_from(row: LedgerRow) -> _PieceSplitter:
        reader = PieceReader(
            client,
            bucket,
            key,
            current.etag,
            current.size,
            piece_bytes,
            seams.request_bytes or REQUEST_BYTES,
            compression_of(key),
            source.max_uncompressed_bytes,
        )
        split = partial(split_km_lines, repair_octal=source.repair_octal_escapes)
        return _PieceSplitter(
            reader, row, seams.now_epoch, chunk_bytes, split, warehouse.lay_out, splitters, readers
        )

    pieces = pieces_from(row)
    try:
        while not row.is_complete:
            if chunks and clock() - started >= budget:
                stopped_on_budget = True  # the pieces split ahead are dropped, not lost
                break
            try:
                row = warehouse.commit_chunk(
                    row, pieces.next_chunk(), first_of_run=not chunks, run_id=run_id
                )
            except WarehouseConflict:
                # A lake refused the commit (another source's chunk changed the same rows
                # first): nothing of it is in the lake, so the chunk is read and split again
                # from the committed offset, which has not moved.
                conflicts += 1
                if conflicts > MAX_CHUNK_CONFLICTS:
                    raise
                pieces.close()
                pieces = pieces_from(row)
                continue
            crash_point("import.chunk_committed")
            hold_point("import.chunk_committed", source.name)
            chunks += 1
            after_commit(row)
    except (FileChangedError, S3AccessError) as exc:
        # Deleted, replaced or unreadable mid-import: say so in the ledger (and status).
        warehouse.mark_failed(row, str(exc))
        raise
    finally:
        splitters.shutdown(wait=False, cancel_futures=True)
        pieces.close()
        readers.shutdown(wait=False)
    return ImportReport(
        ledger=row,
        start_offset=start_offset,
        chunks=chunks,
        bytes_read=row.next_offset - start_offset,
        lines_read=row.lines_read - opened.lines_read,
        lines_loaded=row.lines_loaded - opened.lines_loaded,
        lines_rejected=row.lines_rejected - opened.lines_rejected,
        lines_blank=row.lines_blank - opened.lines_blank,
        seconds=clock() - started,
        resume_hint=resume_hint[0] if resume_hint and resume_hint[1] == row.file_etag else None,
        stopped_on_budget=stopped_on_budget,
        chunks_read_again=conflicts,
    )


def retire_replaced_versions(
    warehouse: Warehouse, source: SourceConfig, root_files: list[S3File]
) -> list[LedgerRow]:
    """Versions of the source's files that will never resume, since their content left the
    bucket root (overwritten or deleted), marked so in the ledger: their rows leave the
    documented relations for the ``*_replaced`` ones. Keys at or before ``start_after``
    are left as they are: ``root_files`` does not list them."""
    root_etags = {file.key: file.etag for file in root_files}
    return warehouse.retire_versions(source.name, root_etags, after=source.start_after)


def _nothing_to_do(row: LedgerRow, seconds: float) -> ImportReport:
    return ImportReport(
        ledger=row,
        start_offset=row.next_offset,
        chunks=0,
        bytes_read=0,
        lines_read=0,
        lines_loaded=0,
        lines_rejected=0,
        lines_blank=0,
        seconds=seconds,
        resume_hint=None,
        stopped_on_budget=False,
        already_imported=True,
    )


class _PieceSplitter:
    """The file's pieces, read in order and split ``PIECES_AHEAD`` at a time.

    The next piece is always being read (in ``readers``) while earlier ones are split and
    inserted. A piece's first line number comes from counting the newlines before it, so
    no split waits for another. Memory is bounded by the pieces in hand, not the chunk.
    """

    def __init__(
        self,
        reader: PieceReader,
        row: LedgerRow,
        now_epoch: Callable[[], float],
        chunk_bytes: int,
        split: Callable[..., SplitLines],
        lay_out: Callable[[SplitLines], PieceRows],
        splitters: ThreadPoolExecutor,
        readers: ThreadPoolExecutor,
    ) -> None:
        self._reader = reader
        self._split = split
        self._lay_out = lay_out
        self._now_epoch = now_epoch
        self._chunk_bytes = chunk_bytes
        self._splitters = splitters
        self._readers = readers
        self._line_no = row.lines_read + 1
        self._chunk_start = row.next_offset
        # An empty file still gets its one (empty) piece, which completes it.
        self._next_read: Future[Piece] | None = readers.submit(_read_piece, reader, row.next_offset)
        self._read_error: BaseException | None = None
        # (lines counted, where it ends, ends its chunk, the split)
        self._splitting: deque[tuple[int, PieceEnd, bool, Future[PieceRows]]] = deque()

    def close(self) -> None:
        """Drop the pieces in hand. The reader is the read thread's alone: it closes the
        GET after any read in flight there."""
        for _lines, _end, _ends_chunk, split in self._splitting:
            split.cancel()
        self._splitting.clear()
        self._next_read = None
        self._readers.submit(self._reader.close)

    def next_chunk(self) -> Iterator[tuple[PieceRows, PieceEnd]]:
        """The next chunk's pieces, in order: each one's rows and where it ends.

        Iterate it fully before asking for the next chunk.
        """
        self._fill()
        while True:
            if not self._splitting:  # the rest of the file could not be read
                raise self._read_error or RuntimeError("no piece left before the end of file")
            lines, end, ends_chunk, split = self._splitting.popleft()
            self._fill()  # the next piece starts splitting before this one is waited for
            result = split.result()
            if result.split.lines_read != lines:  # would shift every later line number
                raise RuntimeError(
                    f"split read {result.split.lines_read} lines where {lines} were counted"
                )
            yield result, end
            if ends_chunk:
                return

    def _fill(self) -> None:
        """Keep ``PIECES_AHEAD`` pieces splitting, each read starting the next one.

        A failed read is kept until its lines are needed, so it never aborts the
        transaction of the chunk before it.
        """
        while len(self._splitting) < PIECES_AHEAD and self._next_read is not None:
            try:
                piece = self._next_read.result()
            except (FileChangedError, S3AccessError) as exc:
                self._next_read, self._read_error = None, exc
                return
            crash_point("import.chunk_read")
            more = not piece.last
            self._next_read = (
                self._readers.submit(_read_piece, self._reader, piece.end) if more else None
            )
            # A chunk is as many pieces as fit in ``chunk_bytes`` (at least one); the lines
            # before a compressed file's cut commit on their own, before its error.
            ends_chunk = (
                not more
                or piece.cut_short
                or piece.end - self._chunk_start + self._reader.piece_bytes > self._chunk_bytes
            )
            if ends_chunk:
                self._chunk_start = piece.end
            with timed("count lines"):
                lines = count_lines(piece.data)
            now = int(self._now_epoch())
            # A BOM left out of the piece's data still counts in the file's byte offsets.
            data_offset = piece.end - len(piece.data)
            split = self._splitters.submit(
                _split_piece,
                self._split,
                self._lay_out,
                piece.data,
                self._line_no,
                data_offset,
                now,
            )
            end = PieceEnd(piece.end, piece.last, piece.read_offset)
            self._splitting.append((lines, end, ends_chunk, split))
            self._line_no += lines


def _split_piece(
    split: Callable[..., SplitLines],
    lay_out: Callable[[SplitLines], PieceRows],
    data: bytes,
    first_line_no: int,
    first_byte_offset: int,
    now_epoch: int,
) -> PieceRows:
    """Split a piece and lay its rows out for the warehouse, off the inserting thread."""
    with timed("split"):
        lines = split(data, first_line_no, now_epoch, first_byte_offset=first_byte_offset)
    with timed("lay out rows"):
        return lay_out(lines)


def _read_piece(reader: PieceReader, start: int) -> Piece:
    with timed("read"):
        return reader.read_piece(start)
