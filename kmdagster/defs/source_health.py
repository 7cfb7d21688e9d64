"""A source's health, evaluated at each tick of its file sensor after registration.

The ``backlog`` and ``quarantine`` checks (each reported when it changed since the last
tick), the ``file_states`` materialization beside the backlog, and the file asset
materialized again for each key sent again. What it reported last is its part of the
sensor's cursor (``HealthCursor``). It reports and nothing more: what it found
(``Health``) is what the alerts raise and clear from (``alerting.py``). Nothing here can
stop a tick's registration: an error is reported as both checks failed, once per distinct
error, and the next tick tries again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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

from kmdagster.alerts import Condition, file_conditions
from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.backlog import backlog_evaluation, outcome_fingerprint, read_backlog_outcome
from kmdagster.defs.metadata import landed_materialization
from kmdagster.defs.naming import BACKLOG_CHECK, QUARANTINE_CHECK, SourceNames
from kmdagster.defs.run_history import quarantine_evaluation, run_outcomes
from kmdagster.defs.sensors import RootListing
from kmdagster.markdown import file_states_at_a_glance
from kmdagster.s3.objects import RootFiles, S3File
from kmdagster.status import FileState
from kmdagster.wording import counted

HealthEvent = AssetCheckEvaluation | AssetMaterialization | AssetObservation


@dataclass(frozen=True)
class HealthCursor:
    """What the health last reported: the backlog's fingerprint, the quarantined keys, and
    the error that kept it from evaluating the source's health, if one did."""

    backlog: str | None = None
    quarantine: str = ""
    health_error: str = ""
    is_new: bool = False  # no cursor yet: report the quarantine check once, green or red

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> HealthCursor:
        """Its keys of the cursor a tick saved (``source_tick.TickCursor`` reads it)."""
        return cls(
            backlog=saved.get("backlog"),
            quarantine=saved.get("quarantine", ""),
            health_error=saved.get("health_error", ""),
        )

    def saved(self) -> dict[str, Any]:
        """Its keys of the sensor's cursor."""
        return {
            "backlog": self.backlog,
            "quarantine": self.quarantine,
            "health_error": self.health_error,
        }


@dataclass(frozen=True)
class Health:
    """What one evaluation found: the events to record, what it has now reported, and
    either the conditions wrong with the source now among the files it saw, or the error
    that kept it from evaluating (neither when the ledger was held: a partial table)."""

    events: list[HealthEvent]
    cursor: HealthCursor
    conditions: list[Condition] | None = None
    files_seen: frozenset[str] = frozenset()
    error: str = ""


def evaluate_health(
    context: SensorEvaluationContext,
    source: SourceConfig,
    settings: WarehouseSettings,
    listing: RootListing,
    reported: HealthCursor,
) -> Health:
    """The source's health at this tick, after its files were registered."""
    try:
        return health_events(
            context.instance, source, listing.client, settings, listing.root, reported
        )
    except Exception as exc:  # noqa: BLE001  # whatever it is, both checks say so
        error = f"{type(exc).__name__}: {exc}"
        context.log.exception(f"source health of {source.name!r} not evaluated: {error}")
        return health_error_events(source, error, reported)


def health_events(
    instance: DagsterInstance,
    source: SourceConfig,
    client: object,
    settings: WarehouseSettings,
    root: RootFiles,
    reported: HealthCursor,
) -> Health:
    """The backlog and quarantine checks, each where it changed since ``reported`` (both
    after an error, which left them red), and the file states at a glance with the
    backlog."""
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
    if not ledger_read:
        return Health(events, cursor)
    found = file_conditions(source, status.states, passed, backlog_detail(source, metadata))
    return Health(events, cursor, found, frozenset(state.key for state in status.states))


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


def health_error_events(source: SourceConfig, error: str, reported: HealthCursor) -> Health:
    """Both checks failed with ``error``, once per distinct error."""
    cursor = replace(reported, health_error=error, is_new=False)
    names = SourceNames.of(source)
    if error == reported.health_error:
        return Health([], cursor, error=error)
    metadata = {
        "error": error,
        "what_to_do": f"new files of s3://{source.bucket} are still registered; the "
        f"{names.sensor} tick log has the traceback, and the check turns green at "
        "the first tick that evaluates it",
    }
    events: list[HealthEvent] = [
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
    ]
    return Health(events, cursor, error=error)
