"""The alerts in Dagster: raised at the file sensor's tick from what the health found,
delivered by a sensor of their own.

At each tick of the file sensor, ``raised_alerts`` turns the conditions the health
evaluation found (``source_health.Health``) into an observation of
``<source>/file_states`` for each one raised or cleared (the audit trail in the UI) and
keeps the conditions raised in its part of that sensor's cursor, so each change is
recorded once, whatever the ticks and restarts. The alert
sensor ``<source>_alerts`` POSTs the observations after the last one it delivered, in
order, and moves its cursor past each one the webhook took: a webhook that is down or slow
holds up this sensor only, never registration or an import, and the rest are tried at its
next tick. When more than ``alerts.queue_limit`` wait, the oldest are dropped, and the next
alert delivered says how many (``dropped_before``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultSensorStatus,
    MetadataValue,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from kmdagster.alerts import HEALTH_ERROR, Alert, Condition, changed
from kmdagster.config import AlertSettings, SourceConfig
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.source_health import Health
from kmdagster.webhook import post_alert, webhook_url
from kmdagster.wording import counted

ALERT_METADATA = "alert"
_PAGE = 1000


def raised_alerts(
    source: SourceConfig, health: Health, active: dict[str, Condition] | None, now: datetime
) -> tuple[list[AssetObservation], dict[str, Condition] | None]:
    """An alert for each condition raised or cleared since ``active`` (None: alerts never
    evaluated, so files already over their reject threshold are not announced), and the
    conditions active now. A health evaluation that failed raises ``health_error`` once and
    clears nothing; one that could not read the ledger changes nothing (its partial view
    would clear conditions by mistake)."""
    file_states = SourceNames.of(source).file_states
    if health.error:
        condition = Condition(HEALTH_ERROR, health.error)
        kept = dict(active or {})
        if condition.key in kept:
            return [], kept
        kept[condition.key] = condition
        alert = Alert(HEALTH_ERROR, source.name, health.error, now)
        return [alert_observation(file_states, alert)], kept
    if health.conditions is None:
        return [], active
    alerts, now_active = changed(
        source.name, active or {}, health.conditions, set(health.files_seen), now, active is None
    )
    return [alert_observation(file_states, alert) for alert in alerts], now_active


def alert_observation(file_states: AssetKey, alert: Alert) -> AssetObservation:
    """``alert`` as the event the alert sensor delivers from the event log."""
    return AssetObservation(
        asset_key=file_states,
        description=alert.text,
        metadata={ALERT_METADATA: MetadataValue.json(alert.payload()), "event": alert.event},
    )


@dataclass(frozen=True)
class AlertCursor:
    """The last alert delivered (its event's storage id) and how many were dropped since."""

    after: int | None = None
    dropped: int = 0

    @classmethod
    def parse(cls, cursor: str | None) -> AlertCursor:
        try:
            saved = json.loads(cursor or "")
            return cls(saved.get("after"), int(saved.get("dropped", 0)))
        except (ValueError, AttributeError):
            return cls()

    def serialize(self) -> str:
        return json.dumps({"after": self.after, "dropped": self.dropped})


def waiting_alerts(
    instance: DagsterInstance, file_states: AssetKey, after: int | None
) -> list[tuple[int, dict[str, Any]]]:
    """(storage id, payload) of each alert recorded after ``after``, oldest first."""
    found: list[tuple[int, dict[str, Any]]] = []
    while True:
        page = instance.fetch_observations(
            AssetRecordsFilter(asset_key=file_states, after_storage_id=after),
            limit=_PAGE,
            ascending=True,
        ).records
        for record in page:
            observation = record.asset_observation
            entry = observation.metadata.get(ALERT_METADATA) if observation else None
            if entry is not None:
                found.append((record.storage_id, dict(entry.value)))  # type: ignore[arg-type]
        if len(page) < _PAGE:
            return found
        after = page[-1].storage_id


def build_alert_sensor(source: SourceConfig, settings: AlertSettings) -> SensorDefinition:
    names = SourceNames.of(source)

    @sensor(
        name=names.alert_sensor,
        minimum_interval_seconds=settings.interval_seconds,
        # Alerts are configured on purpose: they run from the start.
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"POSTs the alerts of source {source.name!r} (failed or quarantined files, a "
            "stale backlog, a reject rate over its threshold, a health evaluation that "
            f"failed, and each clearing) to the webhook in ${settings.webhook_url_env}."
        ),
    )
    def alert_sensor(context: SensorEvaluationContext) -> SkipReason:
        cursor = AlertCursor.parse(context.cursor)
        waiting = waiting_alerts(context.instance, names.file_states, cursor.after)
        dropped = cursor.dropped
        if len(waiting) > settings.queue_limit:
            over = len(waiting) - settings.queue_limit
            context.log.warning(
                f"dropped the {counted(over, 'oldest alert')} of {source.name!r}: more than "
                f"alerts.queue_limit ({settings.queue_limit}) were waiting for the webhook"
            )
            dropped += over
            cursor = AlertCursor(waiting[over - 1][0], dropped)
            waiting = waiting[over:]
        if not waiting:
            context.update_cursor(cursor.serialize())
            return SkipReason("no alert waiting")
        url = webhook_url(settings.webhook_url_env)
        if url is None:
            context.update_cursor(cursor.serialize())
            return SkipReason(
                f"{counted(len(waiting), 'alert')} waiting: ${settings.webhook_url_env} is not "
                "set in the daemon's environment"
            )
        sent, problem = 0, None
        deadline = time.monotonic() + settings.timeout_seconds * 2
        for storage_id, payload in waiting:
            if sent and time.monotonic() > deadline:
                problem = "this tick's time is used"
                break
            extra = {"dropped_before": cursor.dropped} if cursor.dropped else {}
            problem = post_alert(url, {**payload, **extra}, settings.timeout_seconds)
            if problem is not None:
                break
            cursor, sent = AlertCursor(storage_id, 0), sent + 1
        context.update_cursor(cursor.serialize())
        left = len(waiting) - sent
        if problem is not None:
            context.log.warning(
                f"alert of {source.name!r} not delivered: {problem}; "
                f"{counted(left, 'alert')} wait for the next tick"
            )
        return SkipReason(
            f"delivered {counted(sent, 'alert')}" + (f"; {left} wait ({problem})" if left else "")
        )

    return alert_sensor
