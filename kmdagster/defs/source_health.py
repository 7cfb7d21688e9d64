"""A source's health, reported at each tick of its file sensor after registration.

The ``backlog`` and ``quarantine`` checks (each reported when it changed since the last
tick), the ``file_states`` materialization beside the backlog, the file asset
materialized again for each key sent again, and the removal of the partitions of files
archived longer ago than ``retain_partitions_days`` (``partition_pruning``). What it
reported last is the sensor's cursor (``HealthCursor``). Nothing here can stop a tick's
registration: an error is reported as both checks failed, once per distinct error, and
the next tick tries again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    SensorEvaluationContext,
)

from kmdagster.alerts import (
    HEALTH_ERROR,
    Alert,
    Condition,
    changed,
    conditions_from_json,
    conditions_to_json,
    file_conditions,
)
from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.alerting import alert_observation
from kmdagster.defs.backlog import backlog_evaluation, outcome_fingerprint, read_backlog_outcome
from kmdagster.defs.metadata import landed_materialization
from kmdagster.defs.naming import BACKLOG_CHECK, QUARANTINE_CHECK, SourceNames
from kmdagster.defs.partition_pruning import partitions_to_prune
from kmdagster.defs.run_history import quarantine_evaluation, run_outcomes
from kmdagster.defs.sensors import RootListing, TickReport
from kmdagster.markdown import file_states_at_a_glance
from kmdagster.s3.objects import RootFiles, S3File
from kmdagster.status import FileState
from kmdagster.wording import counted

HealthEvent = AssetCheckEvaluation | AssetMaterialization | AssetObservation


@dataclass(frozen=True)
class HealthCursor:
    """What the sensor last reported: the backlog's fingerprint, the quarantined keys, and
    the error that kept it from evaluating the source's health, if one did."""

    backlog: str | None = None
    quarantine: str = ""
    health_error: str = ""
    is_new: bool = False  # no cursor yet: report the quarantine check once, green or red
    # Partitions of files archived before this were removed (``partition_pruning``).
    pruned_until: str | None = None
    # The alert conditions raised and not cleared (None: alerts never evaluated yet).
    alerts: dict[str, Condition] | None = None

    @classmethod
    def parse(cls, cursor: str | None) -> HealthCursor:
        """The cursor a tick saved; a missing or unreadable one reports everything anew."""
        try:
            saved = json.loads(cursor or "")
        except ValueError:
            return cls(is_new=True)
        return cls(
            backlog=saved.get("backlog"),
            quarantine=saved.get("quarantine", ""),
            health_error=saved.get("health_error", ""),
            pruned_until=saved.get("pruned_until"),
            alerts=conditions_from_json(saved["alerts"]) if "alerts" in saved else None,
        )

    def serialize(self) -> str:
        saved = {"backlog": self.backlog, "quarantine": self.quarantine}
        pruned = {"pruned_until": self.pruned_until} if self.pruned_until else {}
        alerts = {} if self.alerts is None else {"alerts": conditions_to_json(self.alerts)}
        return json.dumps({**saved, "health_error": self.health_error, **pruned, **alerts})


def health_events(
    instance: DagsterInstance,
    source: SourceConfig,
    client: object,
    settings: WarehouseSettings,
    root: RootFiles,
    reported: HealthCursor,
    alerting: bool = False,
) -> tuple[list[HealthEvent], HealthCursor]:
    """The backlog and quarantine checks, each where it changed since ``reported`` (both
    after an error, which left them red), the file states at a glance with the backlog,
    and (``alerting``) an alert for each condition raised or cleared since."""
    names = SourceNames.of(source)
    listed = root.files
    outcomes = run_outcomes(instance, source, settings, listed)
    quarantined = dict(outcomes.quarantined)
    status, passed, metadata = read_backlog_outcome(client, source, settings, outcomes, root)
    # Without the ledger (an import holds it) the table would be partial: report later.
    ledger_read = "ledger_note" not in metadata
    recovered = bool(reported.health_error)
    cursor = HealthCursor(
        backlog=outcome_fingerprint(passed, metadata) if ledger_read else reported.backlog,
        quarantine=",".join(sorted(quarantined)),
        pruned_until=reported.pruned_until,
        alerts=reported.alerts,
    )
    events: list[HealthEvent] = []
    if cursor.backlog != reported.backlog or (recovered and ledger_read):
        events.append(backlog_evaluation(names.file, passed, metadata))
        events.append(
            AssetMaterialization(
                asset_key=names.file_states,
                description=f"every {source.name} file's state, as the file sensor saw it",
                metadata=file_states_at_a_glance(
                    status.states, status.left_out, status.before_start
                )
                # When the backlog is done and how to import it now, as the check says.
                | {
                    key: metadata[key]
                    for key in ("backlog_done_by", "import_now")
                    if key in metadata
                },
            )
        )
    if cursor.quarantine != reported.quarantine or reported.is_new or recovered:
        events.append(quarantine_evaluation(source, quarantined))
    events.extend(resent_materializations(instance, source, listed, status.states))
    if alerting and ledger_read:  # a partial table would clear conditions by mistake
        found = file_conditions(source, status.states, passed, backlog_detail(source, metadata))
        alerts, active = changed(
            source.name,
            reported.alerts or {},
            found,
            {state.key for state in status.states},
            datetime.now(timezone.utc).replace(microsecond=0),
            first=reported.alerts is None,
        )
        events.extend(alert_observation(names.file_states, alert) for alert in alerts)
        cursor = replace(cursor, alerts=active)
    return events, cursor


def backlog_detail(source: SourceConfig, metadata: dict[str, Any]) -> str:
    return (
        f"{counted(int(metadata['backlog_files']), 'file')} waiting; the oldest, "
        f"{metadata['oldest_waiting_key']}, for {float(metadata['oldest_waiting_hours']):.1f} h "
        f"(backlog_warn_hours {source.backlog_warn_hours:g})"
    )


def resent_materializations(
    instance: DagsterInstance, source: SourceConfig, listed: list[S3File], states: list[FileState]
) -> list[AssetMaterialization]:
    """The file asset materialized again for each key sent again: its version at the root
    replaced one the ledger knows, and the partition's latest materialization is still an
    older version's. (A version replaced before any run started leaves no ledger row, so
    its partition shows the new version only once the new one imports.)"""
    root = {file.key: file for file in listed}
    older = {s.key: s for s in states if s.key in root and s.etag != root[s.key].etag}
    file_key = SourceNames.of(source).file
    events = []
    for key, replaced in older.items():
        found = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=file_key, asset_partitions=[key]), limit=1
        ).records
        latest = found[0].asset_materialization if found else None
        shown = latest.metadata.get("etag") if latest is not None else None
        if getattr(shown, "value", None) == root[key].etag:
            continue
        description = (
            f"s3://{source.bucket}/{key} sent again: ETag {root[key].etag} replaces "
            f"{replaced.etag} ({replaced.state})"
        )
        events.append(landed_materialization(file_key, source.bucket, root[key], description))
    return events


def health_error_events(
    source: SourceConfig, error: str, reported: HealthCursor, alerting: bool = False
) -> tuple[list[HealthEvent], HealthCursor]:
    """Both checks failed with ``error``, once per distinct error; with ``alerting``, the
    ``health_error`` alert once until the health is evaluated again."""
    cursor = replace(reported, health_error=error, is_new=False)
    names = SourceNames.of(source)
    raised: list[HealthEvent] = []
    if alerting:
        condition = Condition(HEALTH_ERROR, error)
        active = dict(reported.alerts or {})
        if condition.key not in active:
            active[condition.key] = condition
            at = datetime.now(timezone.utc).replace(microsecond=0)
            alert = Alert(HEALTH_ERROR, source.name, error, at)
            raised.append(alert_observation(names.file_states, alert))
        cursor = replace(cursor, alerts=active)
    if error == reported.health_error:
        return raised, cursor
    metadata = {
        "error": error,
        "what_to_do": f"new files of s3://{source.bucket} are still registered; the "
        f"{names.sensor} tick log has the traceback, and the check turns green at "
        "the first tick that evaluates it",
    }
    events: list[HealthEvent] = [
        *raised,
        *(
            AssetCheckEvaluation(
                asset_key=names.file,
                check_name=name,
                passed=False,
                severity=severity,
                metadata=metadata,
                description=f"not evaluated: {error}",
            )
            for name, severity in (
                (BACKLOG_CHECK, AssetCheckSeverity.WARN),
                (QUARANTINE_CHECK, AssetCheckSeverity.ERROR),
            )
        ),
    ]
    return events, cursor


def prune(
    context: SensorEvaluationContext,
    source: SourceConfig,
    settings: WarehouseSettings,
    listing: RootListing,
    reported: HealthCursor,
) -> tuple[list[str], str | None] | None:
    """The partitions to remove and the cursor's new ``pruned_until``; None when the
    ledger could not be read (logged: the next tick tries again)."""
    since = reported.pruned_until
    try:
        keys, until = partitions_to_prune(
            source,
            settings,
            listing.registered,
            {file.key: file for file in listing.files},
            datetime.fromisoformat(since) if since else None,
            datetime.now(timezone.utc),
        )
    except Exception as exc:  # noqa: BLE001  # whatever it is, the tick goes on
        context.log.warning(f"old partitions of {source.name!r} not removed this tick: {exc}")
        return None
    return keys, until.isoformat() if until else None


def report_health(
    context: SensorEvaluationContext,
    source: SourceConfig,
    settings: WarehouseSettings,
    listing: RootListing,
    alerting: bool = False,
) -> TickReport:
    """The source's health at this tick, after its files were registered; ``alerting``
    (an ``alerts`` section is configured) records an alert for each change."""
    reported = HealthCursor.parse(context.cursor)
    try:
        events, cursor = health_events(
            context.instance,
            source,
            listing.client,
            settings,
            listing.root,
            reported,
            alerting,
        )
    except Exception as exc:  # noqa: BLE001  # whatever it is, both checks say so
        error = f"{type(exc).__name__}: {exc}"
        context.log.exception(f"source health of {source.name!r} not evaluated: {error}")
        events, cursor = health_error_events(source, error, reported, alerting)
    done = ["reported the file states"] if events else []
    pruned = prune(context, source, settings, listing, reported)
    to_remove = pruned[0] if pruned else []
    if pruned is not None:
        cursor = replace(cursor, pruned_until=pruned[1])
    if to_remove:
        done.append(
            f"removed the partitions of {counted(len(to_remove), 'file')} archived over "
            f"{source.retain_partitions_days:g} days ago"
        )
    changed = cursor != reported
    return TickReport(
        events=list(events),
        partitions_to_remove=to_remove,
        cursor=cursor.serialize() if changed else context.cursor,
        done=done,
    )
