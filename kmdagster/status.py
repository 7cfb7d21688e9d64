"""Where every file of a source stands: the bucket root joined with the warehouse ledger.

``file_states`` is pure (S3 listing and ledger rows in, states out); ``backlog_eta``
turns the backlog into tick times with the source's cron.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from dagster._utils.schedules import cron_string_iterator  # no public cron iterator in 1.13

from kmdagster.storage.s3_objects import S3File
from kmdagster.storage.warehouse import LedgerRow

# States shown to people. The ledger's own statuses, plus two the ledger cannot know:
# "superseded" (the key now holds other content) and "deleted" (gone before it finished).
BACKLOG_STATES = ("pending", "in_progress", "failed", "imported")


@dataclass(frozen=True)
class FileState:
    key: str
    etag: str
    state: str
    size_bytes: int
    at_bucket_root: bool
    next_offset: int = 0
    percent_done: float = 0.0
    lines_read: int = 0
    lines_loaded: int = 0
    lines_rejected: int = 0
    archived_key: str | None = None
    error: str | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return data


def _percent(row: LedgerRow) -> float:
    return round(100.0 * row.next_offset / row.size_bytes, 2) if row.size_bytes else 100.0


def file_states(root_files: list[S3File], ledger: list[LedgerRow]) -> list[FileState]:
    """One state per file version: each root file and each ledger row, in key order."""
    at_root = {(file.key, file.etag) for file in root_files}
    root_etag = {file.key: file.etag for file in root_files}
    states = []
    for row in ledger:
        here = (row.file_key, row.file_etag) in at_root
        state = row.status
        if row.status in ("pending", "in_progress") and not here:
            state = "superseded" if row.file_key in root_etag else "deleted"
        states.append(
            FileState(
                key=row.file_key,
                etag=row.file_etag,
                state=state,
                size_bytes=row.size_bytes,
                at_bucket_root=here,
                next_offset=row.next_offset,
                percent_done=_percent(row),
                lines_read=row.lines_read,
                lines_loaded=row.lines_loaded,
                lines_rejected=row.lines_rejected,
                archived_key=row.archived_key,
                error=row.error,
                updated_at=row.updated_at,
            )
        )
    known = {(row.file_key, row.file_etag) for row in ledger}
    states.extend(
        FileState(
            key=file.key,
            etag=file.etag,
            state="pending",
            size_bytes=file.size,
            at_bucket_root=True,
        )
        for file in root_files
        if (file.key, file.etag) not in known
    )
    return sorted(states, key=lambda s: (s.key, s.updated_at is None, s.updated_at or 0))


def backlog(states: list[FileState]) -> list[FileState]:
    """Files the schedule still has to import or archive: everything still at the root."""
    return [s for s in states if s.at_bucket_root and s.state in BACKLOG_STATES]


def backlog_eta(cron: str, backlog_files: int, now: datetime) -> datetime | None:
    """When the last backlog file's tick comes, at one file per tick (None: no backlog)."""
    if backlog_files <= 0:
        return None
    ticks = cron_string_iterator(now.timestamp(), cron, "UTC")
    tick = now
    for _ in range(backlog_files):
        tick = next(ticks)
    return tick
