"""Quarantine: a file whose import runs keep failing is set aside so the next can go.

The rule, pure and testable without Dagster: walking a file's finished runs from the
newest, the streak of failures ends at a run that succeeded, at a failed run that
advanced the file's committed offset (it proved the file importable: a run killed with
its node after committing chunks is infrastructure, not poison), at the moment an
operator lifted the quarantine (``kmdagster retry``), or after a run launched with the
retry tag (that run still counts if it failed). A run the warehouse failed (its disk
full, its database unreachable) says nothing of the file: it is passed over, neither
counted nor ending the streak. ``threshold`` failures in a streak
quarantine the file, and so does one run that found the version itself unreadable (not
the compression its name says, cut short, expanding past its limit): no retry of the
same bytes can change that, so the file is set aside at once. Nothing of the file is
touched: what it committed and its resume offset stay, and it stays at the bucket root.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    succeeded: bool
    retry: bool  # launched with the retry tag: a new start for the file
    created: float  # epoch seconds
    # Committed at least one chunk of the file version still at the bucket root (the
    # ledger's ``km_import_runs``); progress on a version since replaced does not count.
    advanced: bool = False
    # Failed because the version's own bytes cannot be read as lines (the run's tag).
    unreadable: bool = False
    # Failed because the warehouse could not take the import (the run's tag).
    warehouse_fault: bool = False


@dataclass(frozen=True)
class Quarantine:
    key: str
    failed_runs: int
    last_run_id: str
    last_error: str = ""  # what the last run said, read only where it is shown
    unreadable: bool = False  # set aside at once: its last run found it unreadable


def failure_streak(
    runs_newest_first: Iterable[FinishedRun], lifted_at: float | None = None
) -> list[FinishedRun]:
    """The failed runs since the file last succeeded, advanced or was given a new start,
    but those the warehouse failed."""
    streak = []
    for run in runs_newest_first:
        if run.succeeded or run.advanced or (lifted_at is not None and run.created <= lifted_at):
            break
        if run.warehouse_fault:
            continue
        streak.append(run)
        if run.retry:
            break
    return streak


def quarantine_of(
    key: str, runs_newest_first: Iterable[FinishedRun], lifted_at: float | None, threshold: int
) -> Quarantine | None:
    streak = failure_streak(runs_newest_first, lifted_at)
    unreadable = bool(streak) and streak[0].unreadable
    if len(streak) < threshold and not unreadable:
        return None
    return Quarantine(key, len(streak), streak[0].run_id, unreadable=unreadable)
