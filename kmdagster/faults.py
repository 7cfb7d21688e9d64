"""Named crash points for the kill tests: armed only when ``KMDAGSTER_CRASH_AT`` is set.

``KMDAGSTER_CRASH_AT=commit_chunk.in_transaction:3`` kills the process with SIGKILL the
third time it passes that point, so a test can stop an import at an exact instant and
prove nothing is lost or loaded twice. The variable is read once, when the process
starts; without it ``crash_point`` is a function that does nothing.

``KMDAGSTER_HOLD_AT=import.chunk_committed:orders:/tmp/release`` makes an import of source
``orders`` wait at that point until the file ``/tmp/release`` exists, so a test can hold
one run mid-import while it waits for another to start (two runs shown to overlap by
their records, not by timing). Without it ``hold_point`` does nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

CRASH_ENV = "KMDAGSTER_CRASH_AT"
HOLD_ENV = "KMDAGSTER_HOLD_AT"
HOLD_LIMIT_SECONDS = 600.0  # a test that never releases its hold does not hang forever
CRASH_POINTS = (
    "schema.in_transaction",  # a new warehouse's tables created, not yet committed
    "import.chunk_read",  # a piece read, nothing of its chunk committed
    "commit_chunk.in_transaction",  # rows inserted, ledger not yet updated or committed
    "commit_chunk.aliases_committed",  # a lake's chunk committed, its alias groups not merged
    "import.chunk_committed",  # committed to the warehouse, Dagster not yet told
    "asset.before_progress_event",  # the run's last commit done, no observation logged
    "archive.copied",  # the archive copy exists, the ledger does not know it
    "archive.rejects_written",  # the rejects file exists beside it, the ledger does not know
    "archive.recorded",  # the ledger says archived, the original is not yet deleted
)


def _no_crash(name: str) -> None:
    """No crash point is armed: production."""


def _no_hold(name: str, source: str) -> None:
    """No hold point is armed: production."""


def armed_crash_point(spec: str) -> Callable[[str], None]:
    """A ``crash_point`` that kills this process at the nth pass of ``point:n``."""
    point, _, nth = spec.partition(":")
    if point not in CRASH_POINTS:
        raise ValueError(f"{CRASH_ENV}={spec!r}: no such crash point (known: {CRASH_POINTS})")
    remaining = int(nth or "1")

    def crash_point(name: str) -> None:
        nonlocal remaining
        if name == point:
            remaining -= 1
            if remaining == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    return crash_point


def armed_hold_point(spec: str) -> Callable[[str, str], None]:
    """A ``hold_point`` that waits at ``point`` in imports of ``source`` for ``release``."""
    point, source_name, release = spec.split(":", 2)
    if point not in CRASH_POINTS:
        raise ValueError(f"{HOLD_ENV}={spec!r}: no such point (known: {CRASH_POINTS})")

    def hold_point(name: str, source: str) -> None:
        if name == point and source == source_name:
            deadline = time.monotonic() + HOLD_LIMIT_SECONDS
            while not Path(release).exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    return hold_point


_spec = os.environ.get(CRASH_ENV)
crash_point: Callable[[str], None] = armed_crash_point(_spec) if _spec else _no_crash
_hold_spec = os.environ.get(HOLD_ENV)
hold_point: Callable[[str, str], None] = armed_hold_point(_hold_spec) if _hold_spec else _no_hold
