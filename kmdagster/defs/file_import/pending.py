"""Which files a source imports next: the registered keys at the bucket root, in
alphanumeric order, less those quarantined. The schedule asks for the first; a catch-up
run (``max_files_per_run`` over 1) asks for the ones after its own."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import DagsterInstance

from kmdagster.config import SourceConfig
from kmdagster.defs.run_history import RunProgress, is_quarantined
from kmdagster.s3.objects import S3File


def pending_keys(keys_at_root: list[str], registered: set[str]) -> list[str]:
    """Registered keys still at the bucket root, in alphanumeric (import) order.

    A file leaves the root only when it is archived, so every registered key still there
    is pending: new, partly imported, or re-uploaded with new content.
    """
    return sorted(key for key in keys_at_root if key in registered)


@dataclass(frozen=True)
class NextFiles:
    keys: list[str]  # to import, in order
    set_aside: list[str]  # quarantined keys passed over on the way


def next_files(
    instance: DagsterInstance,
    source: SourceConfig,
    root_files: list[S3File],
    registered: set[str],
    progress: RunProgress,
    limit: int,
    after: str | None = None,
) -> NextFiles:
    """Up to ``limit`` pending keys (after ``after``, when given), skipping quarantined ones.

    The quarantine of a key is read only when the key is reached, so a backlog of
    thousands costs a tick the run history of the few it takes.
    """
    keys: list[str] = []
    set_aside: list[str] = []
    for key in pending_keys([f.key for f in root_files], registered):
        if len(keys) == limit:
            break
        if after is not None and key <= after:
            continue
        if is_quarantined(instance, source, key, progress):
            set_aside.append(key)
        else:
            keys.append(key)
    return NextFiles(keys, set_aside)
