"""Partitions that stay bounded: the sensor removes those of files archived long ago.

Dagster recommends at most 100,000 partitions per asset, and kmdagster adds one per S3
key. A key whose every version was archived (or retired) more than the source's
``retain_partitions_days`` ago, and that is not at the bucket root again, loses its
partition; the ledger, the warehouse rows and the archived copy stay, and `kmdagster
status` and the backlog table read the ledger, not the partitions. The ledger is read
from where the last removal stopped (kept in the sensor's cursor), so a tick reads the
keys archived since then, not the source's whole history. Removals are spread over ticks
(``MAX_REMOVED_PER_TICK``) so that no tick holds the daemon for long.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from dagster import SensorEvaluationContext

from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.resources import TICK_LEDGER_WAIT_SECONDS
from kmdagster.defs.sensors import RootListing
from kmdagster.warehouse.backends import read_warehouse

# Dagster removes partitions one at a time (about 3 ms each on SQLite storage here), inside
# the sensor's tick: a first removal after years is spread over ticks of a few seconds.
MAX_REMOVED_PER_TICK = 2_000


def keys_to_prune(
    registered: Iterable[str], at_root: Iterable[str], archived_long_ago: Iterable[str]
) -> list[str]:
    """The registered keys, not at the bucket root, whose files were archived long ago."""
    keep = set(at_root)
    registered = set(registered)
    return sorted(key for key in set(archived_long_ago) if key in registered and key not in keep)


def partitions_to_prune(
    source: SourceConfig,
    settings: WarehouseSettings,
    registered: Iterable[str],
    at_root: Iterable[str],
    pruned_until: datetime | None,
    now: datetime,
) -> tuple[list[str], datetime | None]:
    """(partition keys to remove, where the next tick reads the ledger from): at most
    ``MAX_REMOVED_PER_TICK`` keys; while more are left the next tick reads the same
    window again (the keys removed are no longer registered).

    Raises what the warehouse raises when it cannot be read; the sensor reports that and
    registers new files all the same.
    """
    cutoff = now - timedelta(days=source.retain_partitions_days)
    with read_warehouse(settings, TICK_LEDGER_WAIT_SECONDS) as warehouse:
        if warehouse is None:  # nothing imported yet
            return [], pruned_until
        archived = warehouse.keys_archived_between(source.name, pruned_until, cutoff)
    keys = keys_to_prune(registered, at_root, archived)
    if len(keys) > MAX_REMOVED_PER_TICK:
        return keys[:MAX_REMOVED_PER_TICK], pruned_until
    return keys, cutoff


def prune(
    context: SensorEvaluationContext,
    source: SourceConfig,
    settings: WarehouseSettings,
    listing: RootListing,
    pruned_until: str | None,
) -> tuple[list[str], str | None] | None:
    """The file sensor's part: the partitions to remove at this tick and where the next
    one reads the ledger from; None when the ledger could not be read (logged: the next
    tick tries again)."""
    try:
        keys, until = partitions_to_prune(
            source,
            settings,
            listing.registered,
            {file.key: file for file in listing.files},
            datetime.fromisoformat(pruned_until) if pruned_until else None,
            datetime.now(timezone.utc),
        )
    except Exception as exc:  # noqa: BLE001  # whatever it is, the tick goes on
        context.log.warning(f"old partitions of {source.name!r} not removed this tick: {exc}")
        return None
    return keys, until.isoformat() if until else None
