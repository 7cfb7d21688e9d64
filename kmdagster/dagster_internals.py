"""The few Dagster internals kmdagster uses, each with no public equivalent in Dagster 1.13.

Kept in this one module so a Dagster upgrade that moves them breaks here, visibly, and
nowhere else.

- Cron: Dagster runs schedules with its own cron dialect (``@hourly``, ranges, steps), so
  the configuration is validated and the backlog's finish time computed by the same code
  the scheduler uses; a separate cron library could disagree with it.
- ``UnresolvedAssetJobDefinition``: the type ``define_asset_job`` returns, for annotations
  only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
