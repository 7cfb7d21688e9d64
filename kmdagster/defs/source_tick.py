"""What a source's file sensor does at each tick after registering new files, part by
part: the health reports (``source_health``: checks, file states), the alerts raise and
clear from what it found (``alerting``, when an ``alerts`` section is configured), and
pruning removes the partitions of files archived long ago (``partition_pruning``).

Each part keeps its own keys of the sensor's one cursor (``TickCursor``), so a part
changes nothing of another's, and one cursor written by an earlier release reads the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from dagster import SensorEvaluationContext

from kmdagster.alerts import Condition, conditions_from_json, conditions_to_json
from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.alerting import raised_alerts
from kmdagster.defs.partition_pruning import prune
from kmdagster.defs.sensors import AfterRegistration, RootListing, TickReport
from kmdagster.defs.source_health import HealthCursor, evaluate_health
from kmdagster.wording import counted


@dataclass(frozen=True)
class TickCursor:
    """The sensor's cursor: the health's part, the alert conditions raised (None: alerts
    never evaluated) and where pruning goes on from."""

    health: HealthCursor
    alerts: dict[str, Condition] | None = None
    pruned_until: str | None = None

    @classmethod
    def parse(cls, cursor: str | None) -> TickCursor:
        try:
            saved: dict[str, Any] = json.loads(cursor or "")
        except ValueError:
            return cls(HealthCursor(is_new=True))
        return cls(
            HealthCursor.from_saved(saved),
            conditions_from_json(saved["alerts"]) if "alerts" in saved else None,
            saved.get("pruned_until"),
        )

    def serialize(self) -> str:
        pruned = {"pruned_until": self.pruned_until} if self.pruned_until else {}
        alerts = {} if self.alerts is None else {"alerts": conditions_to_json(self.alerts)}
        return json.dumps({**self.health.saved(), **pruned, **alerts})


def source_tick_does(with_alerts: bool) -> str:
    """What ``source_tick`` does, in the sensor's description."""
    alerts = ", records an alert for each condition raised or cleared" if with_alerts else ""
    return (
        "reports the source's health (the backlog and quarantine checks, the file states)"
        f"{alerts}, and removes the partitions of files archived long ago"
    )


def source_tick(with_alerts: bool) -> AfterRegistration:
    """The file sensor's work after registration: health, then the alerts when
    ``with_alerts``, then pruning."""

    def after_registration(
        context: SensorEvaluationContext,
        source: SourceConfig,
        settings: WarehouseSettings,
        listing: RootListing,
    ) -> TickReport:
        reported = TickCursor.parse(context.cursor)
        health = evaluate_health(context, source, settings, listing, reported.health)
        cursor = replace(reported, health=health.cursor)
        events = list(health.events)
        done = ["reported the file states"] if events else []
        if with_alerts:
            now = datetime.now(timezone.utc).replace(microsecond=0)
            alerts, active = raised_alerts(source, health, reported.alerts, now)
            events.extend(alerts)
            cursor = replace(cursor, alerts=active)
            if alerts:
                done.append(f"recorded {counted(len(alerts), 'alert')}")
        pruned = prune(context, source, settings, listing, reported.pruned_until)
        to_remove = pruned[0] if pruned else []
        if pruned is not None:
            cursor = replace(cursor, pruned_until=pruned[1])
        if to_remove:
            done.append(
                f"removed the partitions of {counted(len(to_remove), 'file')} archived over "
                f"{source.retain_partitions_days:g} days ago"
            )
        return TickReport(
            events=events,
            partitions_to_remove=to_remove,
            cursor=cursor.serialize() if cursor != reported else context.cursor,
            done=done,
        )

    return after_registration
