"""The states a file version can be in, and the groups of them the code acts on.

The ledger (``km_import_files.status``) holds the first seven; ``quarantined`` and
``reimported_identical`` are derived from Dagster's run records and the bucket root
(``status.file_states``). docs/ui.md says what each means to a user.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):  # what enum.StrEnum (Python 3.11+) is, on 3.10 too
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    FAILED = "failed"
    IMPORTED = "imported"
    ARCHIVED = "archived"
    SUPERSEDED = "superseded"
    DELETED = "deleted"
    QUARANTINED = "quarantined"
    REIMPORTED_IDENTICAL = "reimported_identical"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# Every line of the version is in the warehouse.
COMPLETE = frozenset({State.IMPORTED, State.ARCHIVED})
# Not finished, and may still resume: what an import run picks up.
UNFINISHED = (State.PENDING, State.IN_PROGRESS, State.FAILED)
# Content left S3 before the version finished: it never resumes, its rows leave the
# documented relations for ``<relation>_replaced``.
RETIRED = (State.SUPERSEDED, State.DELETED)
# Files the schedule still has to import or archive (quarantined ones wait apart).
BACKLOG = frozenset({*UNFINISHED, State.IMPORTED, State.REIMPORTED_IDENTICAL})
# Partly imported, with an offset the next run resumes from.
RESUMABLE = frozenset({State.IN_PROGRESS, State.FAILED, State.QUARANTINED})
# Fully imported, whether or not archived yet.
DONE = frozenset({*COMPLETE, State.REIMPORTED_IDENTICAL})
# Files whose runs left an error to show.
WITH_ERROR = frozenset({State.FAILED, State.QUARANTINED})
# The states an analyst looks for first in the UI's summary, in that order.
AT_A_GLANCE = (
    State.IN_PROGRESS,
    State.FAILED,
    State.QUARANTINED,
    State.PENDING,
    State.IMPORTED,
)
