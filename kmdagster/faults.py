"""Named crash points for the kill tests: inert unless ``KMDAGSTER_CRASH_AT`` is set.

``KMDAGSTER_CRASH_AT=commit_chunk.in_transaction:3`` kills the process with SIGKILL the
third time it passes that point, so a test can stop an import at an exact instant and
prove nothing is lost or loaded twice. Production never sets the variable.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

CRASH_ENV = "KMDAGSTER_CRASH_AT"
CRASH_POINTS = (
    "import.chunk_read",  # a piece read, nothing of its chunk committed
    "commit_chunk.in_transaction",  # rows inserted, ledger not yet updated or committed
    "import.chunk_committed",  # committed to the warehouse, Dagster not yet told
    "asset.before_progress_event",  # the run's last commit done, no observation logged
    "archive.copied",  # the archive copy exists, the ledger does not know it
    "archive.rejects_written",  # the rejects file exists beside it, the ledger does not know
    "archive.recorded",  # the ledger says archived, the original is not yet deleted
)
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] == int(nth or "1"):
        os.kill(os.getpid(), signal.SIGKILL)
