"""The few Dagster internals kmdagster uses, each with no public equivalent in Dagster 1.13.

Kept in this one module so a Dagster upgrade that moves them breaks here, visibly, and
nowhere else.

- Cron: Dagster runs schedules with its own cron dialect (``@hourly``, ranges, steps), so
  the configuration is validated and the backlog's finish time computed by the same code
  the scheduler uses; a separate cron library could disagree with it.
- ``UnresolvedAssetJobDefinition``: the type ``define_asset_job`` returns, for annotations
  only.
- An asset backfill created from a terminal (``kmdagster backfill``): Dagster's CLI makes
  one only for single-run assets, and the UI's dialog is its only other maker; this one
  is the same record the dialog writes, which the daemon then runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import AssetKey, DagsterInstance
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as AssetJob,  # noqa: F401 (for the defs modules)
    )


def is_valid_cron(cron: str) -> bool:
    from dagster._utils.schedules import is_valid_cron_string

    return is_valid_cron_string(cron)


def cron_ticks_after(cron: str, start: datetime) -> Iterator[datetime]:
    """The schedule's ticks after ``start``, in UTC, as Dagster's scheduler computes them."""
    from dagster._utils.schedules import cron_string_iterator

    return cron_string_iterator(start.timestamp(), cron, "UTC")


def add_asset_backfill(
    instance: DagsterInstance,
    asset_graph: AssetGraph,
    assets: Sequence[AssetKey],
    partitions: Sequence[str],
    tags: Mapping[str, str],
    title: str,
) -> str:
    """Record a backfill of ``partitions`` of ``assets``, as the UI's Materialize dialog
    does; the daemon launches its runs as the assets' backfill policy groups them.
    Returns its id."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=asset_graph,
        partition_names=list(partitions),
        asset_selection=list(assets),
        backfill_timestamp=get_current_timestamp(),
        tags=dict(tags),
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id
