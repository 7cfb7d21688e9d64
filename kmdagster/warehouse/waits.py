"""Waiting out another process: a lock on a DuckDB file, or a commit that came first.

Every backend's waits and retries go through these two, so each has one rule for how
long and how often.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
LOCK_PAUSE_SECONDS = 0.5  # between tries to open a file another process holds
# A conflicting commit is tried again this many times (after DuckLake's own retries), the
# pause doubling from CONFLICT_PAUSE_SECONDS.
CONFLICT_ATTEMPTS = 8
CONFLICT_PAUSE_SECONDS = 0.05


def waiting_while_held(
    attempt: Callable[[], T],
    is_held: Callable[[Exception], bool],
    seconds: float,
    pause: float = LOCK_PAUSE_SECONDS,
) -> T:
    """``attempt()``, tried again while it fails with an error ``is_held`` says is
    another process's hold, for at most ``seconds``; then the last error is raised for
    the caller to say what held it."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not is_held(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)


def retried_on_conflict(attempt: Callable[[], T], conflict: type[BaseException]) -> T:
    """``attempt()``, tried again (the pause doubling) while it raises ``conflict``: a
    commit that another writer's came before, which left nothing behind."""
    for number in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return attempt()
        except conflict:
            if number == CONFLICT_ATTEMPTS:
                raise
            time.sleep(CONFLICT_PAUSE_SECONDS * 2**number)
    raise AssertionError("unreachable")
