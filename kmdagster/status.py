"""Where every file of a source stands: the bucket root joined with the warehouse ledger.

``file_states`` is pure (S3 listing and ledger rows in, states out, in the order the
schedule imports them: the backlog first, by key, then the finished files);
``backlog_eta`` turns the backlog into tick times with the source's cron, as its runs take
files (``max_files_per_run``, the time budget, the source's recent speed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.dagster_internals import cron_ticks_after
from kmdagster.file_state import BACKLOG, RETIRED, State
from kmdagster.quarantine import Quarantine
from kmdagster.s3.objects import RootFiles, S3File, compression_of, list_root
from kmdagster.warehouse.backends import read_warehouse
from kmdagster.warehouse.warehouse import LedgerRow, WarehouseUnavailable
from kmdagster.wording import counted


@dataclass(frozen=True)
class FileState:
    key: str
    etag: str
    state: State
    size_bytes: int
    at_bucket_root: bool
    # ``gzip`` or ``zstd`` when the key says the object is compressed; offsets then count
    # its uncompressed bytes, while sizes and percentages are of the object.
    compression: str | None = None
    next_offset: int = 0
    bytes_left: int = 0  # of the object, still to import
    percent_done: float = 0.0
    lines_read: int = 0
    lines_loaded: int = 0
    lines_rejected: int = 0
    archived_key: str | None = None
    error: str | None = None
    updated_at: datetime | None = None
    # When the version at the bucket root was written (None once it has left the root).
    waiting_since: datetime | None = None
    # 1 for the file the next tick imports, 2 for the one after, ...; None when not queued.
    queue_position: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("updated_at", "waiting_since"):
            value = getattr(self, name)
            data[name] = value.isoformat() if value else None
        return data


@dataclass(frozen=True)
class RunFailure:
    """The latest finished import run of a file failed: which, why, and when it started."""

    run_id: str
    error: str
    created: datetime


@dataclass(frozen=True)
class RunOutcomes:
    """What Dagster's run records say of a source's files (``defs.run_history`` reads them):
    the quarantined ones, and those whose latest finished run failed, by key."""

    quarantined: Mapping[str, Quarantine] = field(default_factory=dict)
    failures: Mapping[str, RunFailure] = field(default_factory=dict)

    def state_of(self, key: str, waiting_since: datetime | None) -> tuple[State, str] | None:
        """(state, error) the runs give a file at the root that is not complete, if any."""
        quarantine = self.quarantined.get(key)
        if quarantine is not None:
            return State.QUARANTINED, quarantine.last_error
        failure = self.failures.get(key)
        # A failure before this version was written was another version's.
        if failure is not None and (waiting_since is None or failure.created >= waiting_since):
            return State.FAILED, failure.error
        return None


def is_the_original(written: datetime | None, row: LedgerRow) -> bool:
    """Whether the object at the root with ``row``'s content is the one ``row`` imported,
    written before its import completed (its archive has yet to delete it), rather than
    the same content sent again afterwards. S3 keeps whole seconds: an object written in
    the second the import completed counts as sent again."""
    if written is None or row.completed_at is None:
        return False
    return written < row.completed_at.replace(microsecond=0)


def file_states(
    root_files: list[S3File], ledger: list[LedgerRow], outcomes: RunOutcomes | None = None
) -> list[FileState]:
    """One state per file version, each root file and each ledger row, in import order.

    ``outcomes`` (from Dagster's run records) marks root files quarantined, or failed with
    their last run's error whatever failed (the ledger only knows S3 and format errors).
    """
    outcomes = outcomes or RunOutcomes()
    at_root = {(file.key, file.etag): file for file in root_files}
    root_etag = {file.key: file.etag for file in root_files}
    # The latest version of each key the ledger knows.
    newest = {row.file_key: row for row in sorted(ledger, key=lambda row: row.updated_epoch)}
    states = []
    for row in ledger:
        here = (row.file_key, row.file_etag) in at_root
        waiting_since = at_root[(row.file_key, row.file_etag)].last_modified if here else None
        state = State(row.status)
        error = row.error
        if not row.is_complete and not here:
            # Its content is gone from S3: replaced by another version, or deleted.
            replaced = row.file_key in root_etag or newest[row.file_key] is not row
            state = State.SUPERSEDED if replaced else State.DELETED
        elif state in RETIRED and here:  # the same content sent again
            state = State.IN_PROGRESS if row.next_offset else State.PENDING
        elif state is State.ARCHIVED and here and not is_the_original(waiting_since, row):
            state = State.REIMPORTED_IDENTICAL
        if here and not row.is_complete:
            from_runs = outcomes.state_of(row.file_key, waiting_since)
            if from_runs is not None:
                state, error = from_runs[0], from_runs[1] or error
        states.append(
            FileState(
                key=row.file_key,
                etag=row.file_etag,
                state=state,
                size_bytes=row.size_bytes,
                at_bucket_root=here,
                compression=compression_of(row.file_key),
                next_offset=row.next_offset,
                bytes_left=row.bytes_left,
                percent_done=row.percent_done,
                lines_read=row.lines_read,
                lines_loaded=row.lines_loaded,
                lines_rejected=row.lines_rejected,
                archived_key=row.archived_key,
                error=error,
                updated_at=row.updated_at,
                waiting_since=waiting_since,
            )
        )
    known = {(row.file_key, row.file_etag) for row in ledger}
    for file in root_files:
        if (file.key, file.etag) in known:
            continue
        state, error = outcomes.state_of(file.key, file.last_modified) or (State.PENDING, None)
        states.append(
            FileState(
                key=file.key,
                etag=file.etag,
                state=state,
                size_bytes=file.size,
                at_bucket_root=True,
                compression=compression_of(file.key),
                bytes_left=file.size,
                error=error,
                waiting_since=file.last_modified,
            )
        )
    return in_import_order(states)


def _is_queued(state: FileState) -> bool:
    return state.at_bucket_root and state.state in BACKLOG


def is_set_aside(state: FileState) -> bool:
    """Quarantined at the bucket root: waiting apart from the backlog until lifted."""
    return state.at_bucket_root and state.state is State.QUARANTINED


def in_import_order(states: list[FileState]) -> list[FileState]:
    """The backlog in the schedule's order (by key), numbered; then the files set aside,
    which wait unnumbered until their quarantine is lifted; then the rest by key."""
    queued = sorted((s for s in states if _is_queued(s)), key=lambda s: s.key)
    aside = sorted((s for s in states if is_set_aside(s)), key=lambda s: s.key)
    done = sorted(
        (s for s in states if not _is_queued(s) and not is_set_aside(s)),
        key=lambda s: (s.key, s.updated_at is None, s.updated_at or 0),
    )
    numbered = [replace(state, queue_position=n) for n, state in enumerate(queued, start=1)]
    return numbered + aside + done


def backlog(states: list[FileState]) -> list[FileState]:
    """Files the schedule still has to import or archive: everything still at the root
    but the files set aside (``set_aside``)."""
    return [s for s in states if _is_queued(s)]


def set_aside(states: list[FileState]) -> list[FileState]:
    """Quarantined files at the root: not in the backlog until their quarantine is lifted."""
    return [s for s in states if is_set_aside(s)]


def oldest_waiting(states: list[FileState]) -> FileState | None:
    """The backlog file written longest ago (None when nothing waits)."""
    dated = [(s.waiting_since, s) for s in backlog(states) if s.waiting_since is not None]
    return min(dated, key=lambda pair: pair[0])[1] if dated else None


def backfill_runs(source: SourceConfig, files: int) -> int:
    """The runs a backfill of ``files`` partitions takes (the import asset's policy)."""
    return -(-files // source.backfill_files_per_run)


def import_now_advice(source: SourceConfig, waiting: int) -> str | None:
    """How to import ``waiting`` files now rather than tick by tick; None when the next
    tick takes them all anyway."""
    if waiting <= source.max_files_per_run:
        return None
    per_run = source.backfill_files_per_run
    runs = backfill_runs(source, waiting)
    return (
        f"to import the {waiting:,} waiting files now, not {source.max_files_per_run:,} a "
        f"tick: `kmdagster backfill {source.name}` (Dagster's backfill, "
        f"{counted(runs, 'run')} of up to {per_run:,} files in key order), or raise "
        "max_files_per_run so that each tick takes more"
    )


SPEED_SAMPLE_FILES = 20  # the latest files imported in one run each
ETA_MAX_TICKS = 100_000


def recent_speed(ledger: list[LedgerRow]) -> float | None:
    """Bytes a second of the source's latest files imported in one run each (from their
    start to their completion); None before any."""
    timed = sorted(
        (
            (row.completed_at, row.size_bytes, (row.completed_at - row.started_at).total_seconds())
            for row in ledger
            if row.import_runs == 1 and row.started_at is not None and row.completed_at
        ),
        reverse=True,
    )[:SPEED_SAMPLE_FILES]
    seconds = sum(spent for _, _, spent in timed if spent > 0)
    return sum(size for _, size, spent in timed if spent > 0) / seconds if seconds else None


def backlog_eta(
    source: SourceConfig,
    waiting: list[FileState],
    bytes_per_second: float | None,
    now: datetime,
) -> datetime | None:
    """The tick by which the schedule has imported every waiting file, as its runs do:
    each tick's run takes up to ``max_files_per_run`` files in order within one time
    budget, a file needing its bytes left at ``bytes_per_second`` (the source's recent
    speed: ``recent_speed``), and a file the budget cuts resumes at the next tick. With
    no speed known, each file fits in its tick. None when nothing waits, or past
    ``ETA_MAX_TICKS`` ticks."""
    needs = [s.bytes_left / bytes_per_second if bytes_per_second else 0.0 for s in waiting]
    ticks = cron_ticks_after(source.cron, now)
    tick, done = now, 0
    for _ in range(ETA_MAX_TICKS):
        if done == len(needs):
            return tick if needs else None
        tick = next(ticks)
        left, taken = source.time_budget_seconds, 0
        while done < len(needs) and taken < source.max_files_per_run and left > 0:
            if needs[done] <= left:
                left -= needs[done]
                done, taken = done + 1, taken + 1
            else:  # stops on the budget at a committed offset; the next tick resumes it
                needs[done] -= left
                left = 0
    return None


@dataclass(frozen=True)
class SourceStatus:
    """Every file of a source in import order (or, read at a glance, the current and the
    latest ones, with ``left_out`` counting the older finished versions by state);
    ``ledger_note`` says why the ledger is missing; ``before_start`` counts the files at
    the root the source leaves alone (``start_after``), which are not listed one by one."""

    states: list[FileState]
    ledger_note: str | None = None
    left_out: Mapping[str, int] = field(default_factory=dict)
    # Files at the root sorting at or before the source's ``start_after``: never imported.
    before_start: int = 0
    bytes_per_second: float | None = None  # the source's recent import speed


def read_source_status(
    client: Any,
    source: SourceConfig,
    warehouse_settings: WarehouseSettings,
    wait_seconds: float,
    root: RootFiles | None = None,
    outcomes: RunOutcomes | None = None,
    recent: int | None = None,
) -> SourceStatus:
    """List the bucket root (unless given) and read the ledger read-only, waiting up to
    ``wait_seconds`` for a running import to release it. ``outcomes`` come from the
    Dagster instance (``defs.run_history.run_outcomes``). With ``recent``, only the
    versions at the root, the unfinished ones and the ``recent`` latest are read: a tick's
    read stays the same size however many files the source has archived."""
    if root is None:
        root = list_root(client, source)
    root_files, before_start = root.files, len(root.before_start)
    left_alone = {file.key for file in root.before_start}
    left_out: dict[str, int] = {}
    try:
        with read_warehouse(warehouse_settings, wait_seconds) as warehouse:
            if warehouse is None:
                ledger = []
            elif recent is None:
                ledger = warehouse.ledger_rows(source.name)
            else:
                keys = [file.key for file in root_files]
                ledger, left_out = warehouse.current_ledger_rows(source.name, keys, recent)
    except WarehouseUnavailable as exc:
        # An import run holds DuckDB's only write lock, or PostgreSQL does not answer:
        # show what S3 alone can tell.
        note = f"ledger not read: {exc}; files at the root show as pending"
        return SourceStatus(file_states(root_files, [], outcomes), note, before_start=before_start)
    ledger = [row for row in ledger if row.file_key not in left_alone]
    return SourceStatus(
        file_states(root_files, ledger, outcomes),
        left_out=left_out,
        before_start=before_start,
        bytes_per_second=recent_speed(ledger),
    )
