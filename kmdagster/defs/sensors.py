"""The sensor of a source: registers each new matching S3 key as a dynamic partition.

It removes the partitions of files archived longer ago than the source's
``retain_partitions_days`` (``partition_pruning``), and reports what it sees: a
materialization of ``<source>/s3_file`` for each file it registers (the file landed in
S3), the source's ``backlog`` check whenever the table of file states changed since its
last report, and its ``quarantine`` check whenever the set of quarantined files changed.
"""

import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from dagster import (
    AddDynamicPartitionsRequest,
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    DynamicPartitionsDefinition,
    MetadataValue,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster_aws.s3 import S3Resource

from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.backlog import backlog_evaluation, outcome_fingerprint, read_backlog_outcome
from kmdagster.defs.naming import BACKLOG_CHECK, QUARANTINE_CHECK, SourceNames
from kmdagster.defs.partition_pruning import partitions_to_prune
from kmdagster.defs.partitions import is_valid_partition_key
from kmdagster.defs.resources import WarehouseResource
from kmdagster.defs.run_history import (
    quarantine_evaluation,
    run_outcomes,
)
from kmdagster.markdown import file_states_at_a_glance
from kmdagster.s3.objects import FilePattern, S3File, list_root_files
from kmdagster.status import FileState
from kmdagster.wording import counted, names_and_more


def new_partition_keys(listed_keys: list[str], registered: set[str]) -> tuple[list[str], list[str]]:
    """(keys to register, keys Dagster cannot take as partition keys), both sorted."""
    fresh = sorted(key for key in set(listed_keys) if key not in registered)
    return (
        [key for key in fresh if is_valid_partition_key(key)],
        [key for key in fresh if not is_valid_partition_key(key)],
    )


@dataclass(frozen=True)
class SensorCursor:
    """What the sensor last reported: the backlog's fingerprint, the quarantined keys, and
    the error that kept it from evaluating the source's health, if one did."""

    backlog: str | None = None
    quarantine: str = ""
    health_error: str = ""
    is_new: bool = False  # no cursor yet: report the quarantine check once, green or red
    # Partitions of files archived before this were removed (``partition_pruning``).
    pruned_until: str | None = None

    @classmethod
    def parse(cls, cursor: str | None) -> "SensorCursor":
        if not cursor:
            return cls(is_new=True)
        try:
            saved = json.loads(cursor)
        except ValueError:  # a cursor written before quarantines: the backlog's alone
            return cls(backlog=cursor, is_new=True)
        return cls(
            backlog=saved.get("backlog"),
            quarantine=saved.get("quarantine", ""),
            health_error=saved.get("health_error", ""),
            pruned_until=saved.get("pruned_until"),
        )

    def serialize(self) -> str:
        saved = {"backlog": self.backlog, "quarantine": self.quarantine}
        pruned = {"pruned_until": self.pruned_until} if self.pruned_until else {}
        return json.dumps({**saved, "health_error": self.health_error, **pruned})


def health_events(
    instance: DagsterInstance,
    source: SourceConfig,
    file_key: AssetKey,
    client: Any,
    settings: WarehouseSettings,
    listed: list[S3File],
    reported: SensorCursor,
) -> tuple[list[AssetCheckEvaluation | AssetMaterialization], SensorCursor]:
    """The backlog and quarantine checks, each where it changed since ``reported`` (both
    after an error, which left them red), and the file states at a glance with the
    backlog."""
    outcomes = run_outcomes(instance, source, settings, listed)
    quarantined = dict(outcomes.quarantined)
    status, passed, metadata = read_backlog_outcome(client, source, settings, outcomes, listed)
    # Without the ledger (an import holds it) the table would be partial: report later.
    ledger_read = "ledger_note" not in metadata
    recovered = bool(reported.health_error)
    cursor = SensorCursor(
        backlog=outcome_fingerprint(passed, metadata) if ledger_read else reported.backlog,
        quarantine=",".join(sorted(quarantined)),
        pruned_until=reported.pruned_until,
    )
    events: list[AssetCheckEvaluation | AssetMaterialization] = []
    if cursor.backlog != reported.backlog or (recovered and ledger_read):
        events.append(backlog_evaluation(file_key, passed, metadata))
        events.append(
            AssetMaterialization(
                asset_key=SourceNames.of(source).file_states,
                description=f"every {source.name} file's state, as the file sensor saw it",
                metadata=file_states_at_a_glance(status.states, status.left_out),
            )
        )
    if cursor.quarantine != reported.quarantine or reported.is_new or recovered:
        events.append(quarantine_evaluation(source, quarantined))
    events.extend(resent_materializations(instance, source, listed, status.states))
    return events, cursor


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
    source: SourceConfig, file_key: AssetKey, error: str, reported: SensorCursor
) -> tuple[list[AssetCheckEvaluation], SensorCursor]:
    """Both checks failed with ``error``, once per distinct error."""
    cursor = replace(reported, health_error=error, is_new=False)
    if error == reported.health_error:
        return [], cursor
    metadata = {
        "error": error,
        "what_to_do": f"new files of s3://{source.bucket} are still registered; the "
        f"{SourceNames.of(source).sensor} tick log has the traceback, and the check turns green at "
        "the first tick that evaluates it",
    }
    events = [
        AssetCheckEvaluation(
            asset_key=file_key,
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
    return events, cursor


def prune(
    context: SensorEvaluationContext,
    source: SourceConfig,
    settings: WarehouseSettings,
    registered: set[str],
    at_root: dict[str, S3File],
    reported: SensorCursor,
) -> tuple[list[str], str | None] | None:
    """The partitions to remove and the cursor's new ``pruned_until``; None when the
    ledger could not be read (logged: the next tick tries again)."""
    since = reported.pruned_until
    try:
        keys, until = partitions_to_prune(
            source,
            settings,
            registered,
            at_root,
            datetime.fromisoformat(since) if since else None,
            datetime.now(timezone.utc),
        )
    except Exception as exc:  # noqa: BLE001  # whatever it is, registration goes on
        context.log.warning(f"old partitions of {source.name!r} not removed this tick: {exc}")
        return None
    return keys, until.isoformat() if until else None


def landed_materialization(
    file_key: AssetKey, bucket: str, file: S3File, description: str | None = None
) -> AssetMaterialization:
    """The S3 file as an asset partition: it exists, with this version."""
    return AssetMaterialization(
        asset_key=file_key,
        partition=file.key,
        description=description or f"s3://{bucket}/{file.key} registered for import",
        metadata={
            "etag": file.etag,
            "size_bytes": file.size,
            "last_modified": file.last_modified.isoformat() if file.last_modified else "",
            "s3_uri": MetadataValue.url(f"s3://{bucket}/{file.key}"),
        },
    )


def build_file_sensor(
    source: SourceConfig, partitions: DynamicPartitionsDefinition, file_key: AssetKey
) -> SensorDefinition:
    pattern = FilePattern.of_source(source)
    partitions_name = SourceNames.of(source).partitions

    @sensor(
        name=SourceNames.of(source).sensor,
        minimum_interval_seconds=source.sensor_interval_seconds,
        # Off until the user confirms the setup (`kmdagster confirm` or the UI toggle).
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Registers each key matching {pattern.describe()} at the root of "
            f"s3://{source.bucket} as a partition of {partitions_name}, and reports the "
            "source's backlog check."
        ),
    )
    def file_sensor(
        context: SensorEvaluationContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ):
        client = km_s3.get_client()
        listed = list_root_files(client, source)
        registered = set(context.instance.get_dynamic_partitions(partitions_name))
        to_add, unusable = new_partition_keys([f.key for f in listed], registered)
        for key in unusable:
            context.log.warning(
                f"s3://{source.bucket}/{key} matches but cannot be a Dagster partition key "
                "(it contains '...' or a control character); rename it to import it"
            )
        by_key = {f.key: f for f in listed}
        events: list = [landed_materialization(file_key, source.bucket, by_key[k]) for k in to_add]
        reported = SensorCursor.parse(context.cursor)
        try:
            checks, cursor = health_events(
                context.instance, source, file_key, client, km_warehouse.settings, listed, reported
            )
        except Exception as exc:  # noqa: BLE001  # whatever it is, registration goes on
            error = f"{type(exc).__name__}: {exc}"
            context.log.exception(f"source health of {source.name!r} not evaluated: {error}")
            checks, cursor = health_error_events(source, file_key, error, reported)
        events.extend(checks)
        pruned = prune(context, source, km_warehouse.settings, registered, by_key, reported)
        if pruned is not None:
            cursor = replace(cursor, pruned_until=pruned[1])
        to_remove = pruned[0] if pruned else []
        if not events and not to_remove and cursor == reported:
            return SkipReason(
                f"no new keys matching {pattern.describe()} in s3://{source.bucket} "
                f"({len(listed)} listed, all registered); file states unchanged"
            )
        # A sensor that requests no run is a skipped tick to Dagster: say what it did instead
        # of Dagster's "returned an empty result".
        did = (
            [f"registered {counted(len(to_add), 'new file')} ({names_and_more(to_add, 3)})"]
            if to_add
            else []
        )
        if checks:
            did.append("reported the file states")
        if to_remove:
            did.append(
                f"removed the partitions of {counted(len(to_remove), 'file')} archived over "
                f"{source.retain_partitions_days:g} days ago"
            )
        requests: list[AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest] = []
        if to_add:
            requests.append(partitions.build_add_request(to_add))
        if to_remove:
            requests.append(partitions.build_delete_request(to_remove))
        return SensorResult(
            dynamic_partitions_requests=requests,
            asset_events=events,
            cursor=cursor.serialize(),
            skip_reason=SkipReason("; ".join(did or ["nothing new"]) + "; the schedule imports"),
        )

    return file_sensor
