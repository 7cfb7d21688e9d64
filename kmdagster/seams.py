"""The one injection point for tests: the clock, read and copy sizes, faults, and the
benchmarks' stage timings.

Production never sets anything here: ``current()`` gives the defaults, and its crash and
hold points are those ``kmdagster.faults`` arms from the environment (a kill test runs
the product in a subprocess). A test in the same process swaps values for a block::

    with seams.injected(piece_bytes=4096, clock=fake_clock):
        import_file(...)

The values are process-wide, not per thread: an import reads them in its worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from kmdagster import faults


class StageSink(Protocol):
    """Where ``stages.timed`` adds each stage's seconds (``stages.StageTimes``)."""

    def add(self, stage: str, wall: float, cpu: float) -> None: ...


@dataclass(frozen=True)
class Seams:
    """What a test may change; the defaults are what a run uses. A size left None is the
    one its module declares with its reason (``s3.piece_reader``, ``s3.archive``)."""

    piece_bytes: int | None = None
    request_bytes: int | None = None
    single_copy_max_bytes: int | None = None
    copy_part_bytes: int | None = None
    now_epoch: Callable[[], float] = time.time  # bounds timestamps in the future
    clock: Callable[[], float] = time.monotonic  # measures the time budget
    after_commit: Callable[[Any], None] = lambda row: None  # given each committed LedgerRow
    crash_point: Callable[[str], None] = faults.crash_point
    hold_point: Callable[[str, str], None] = faults.hold_point
    stage_times: StageSink | None = None  # where an import's time goes (benchmarks)


_lock = threading.Lock()
_current = Seams()


def current() -> Seams:
    return _current


@contextmanager
def injected(**changes: Any) -> Iterator[Seams]:
    """``current()`` with ``changes`` for the block, then as it was."""
    global _current
    with _lock:
        before = _current
        _current = replace(before, **changes)
    try:
        yield _current
    finally:
        with _lock:
            _current = before


def crash_point(name: str) -> None:
    """Where a kill test may stop the process (``faults.CRASH_POINTS``)."""
    _current.crash_point(name)


def after_commit(row: Any) -> None:
    """Where a test acts on a file between two chunks of its import (``Seams.after_commit``)."""
    _current.after_commit(row)


def hold_point(name: str, source: str) -> None:
    """Where a test may hold an import of ``source`` (``faults.HOLD_ENV``)."""
    _current.hold_point(name, source)
