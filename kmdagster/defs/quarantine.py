"""Quarantine read from Dagster's own records, lifted from the CLI or by a tagged launch.

A file's import runs are the runs tagged with its source and partition; the rule is in
``kmdagster.quarantine``. ``kmdagster retry SOURCE KEY`` lifts a quarantine by recording
an observation of the file's partition (visible in the UI); a run launched from the UI
with the tag ``kmdagster/retry: true`` gives the file a new start too. Either way the file
is first in line again and resumes from its committed offset.
"""

from dataclasses import replace

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetObservation,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    MetadataValue,
    RunsFilter,
    asset_check,
)

from kmdagster.config import SourceConfig
from kmdagster.defs.assets import file_asset_key
from kmdagster.defs.runs import SOURCE_TAG
from kmdagster.quarantine import FinishedRun, Quarantine, quarantine_of
from kmdagster.report import markdown_table

RETRY_TAG = "kmdagster/retry"
PARTITION_TAG = "dagster/partition"
LIFTED_METADATA = "quarantine_lifted"
QUARANTINE_CHECK = "quarantine"
RECENT_FAILURES = 200  # failed runs of a source looked at to find quarantined files


def _finished_runs(
    instance: DagsterInstance, source: SourceConfig, key: str, limit: int
) -> list[FinishedRun]:
    records = instance.get_run_records(
        RunsFilter(
            tags={SOURCE_TAG: source.name, PARTITION_TAG: key},
            statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE],
        ),
        limit=limit,
    )
    return [
        FinishedRun(
            run_id=record.dagster_run.run_id,
            succeeded=record.dagster_run.status == DagsterRunStatus.SUCCESS,
            retry=record.dagster_run.tags.get(RETRY_TAG, "").lower() == "true",
            created=record.create_timestamp.timestamp(),
        )
        for record in records
    ]


def _lifted_at(
    instance: DagsterInstance, source: SourceConfig, key: str, limit: int
) -> float | None:
    # Each run records at most one observation of its file, so a lift newer than the
    # oldest run of a streak is among its newest ``limit`` observations.
    found = instance.fetch_observations(
        AssetRecordsFilter(asset_key=file_asset_key(source), asset_partitions=[key]), limit=limit
    )
    for record in found.records:
        observation = record.asset_observation
        if observation is not None and LIFTED_METADATA in observation.metadata:
            return record.timestamp
    return None


def failure_message(instance: DagsterInstance, run_id: str) -> str:
    """Why the run failed, as its failed step (or the run) said it."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data if entry.dagster_event else None
        if data is not None and data.user_failure_data and data.user_failure_data.description:
            return data.user_failure_data.description
        if data is not None and data.error is not None:
            return data.error.message.strip()
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE):
        return entry.message or ""
    return ""


def _quarantine_without_error(
    instance: DagsterInstance, source: SourceConfig, key: str
) -> Quarantine | None:
    threshold = source.quarantine_after_failed_runs
    runs = _finished_runs(instance, source, key, threshold)
    if len(runs) < threshold or any(run.succeeded for run in runs):
        return None  # the usual case, in one query
    return quarantine_of(key, runs, _lifted_at(instance, source, key, threshold + 1), threshold)


def is_quarantined(instance: DagsterInstance, source: SourceConfig, key: str) -> bool:
    """Whether the file's last runs failed ``quarantine_after_failed_runs`` times in a row
    (for the schedule, which needs no error message and so reads no event log)."""
    return _quarantine_without_error(instance, source, key) is not None


def quarantine_for_key(
    instance: DagsterInstance, source: SourceConfig, key: str
) -> Quarantine | None:
    """The file's quarantine, with its last run's error, if it is quarantined."""
    found = _quarantine_without_error(instance, source, key)
    if found is None:
        return None
    return replace(found, last_error=failure_message(instance, found.last_run_id))


def quarantined_files(instance: DagsterInstance, source: SourceConfig) -> dict[str, Quarantine]:
    """Every quarantined file of the source, by key, among its recently failed runs."""
    failed = instance.get_run_records(
        RunsFilter(tags={SOURCE_TAG: source.name}, statuses=[DagsterRunStatus.FAILURE]),
        limit=RECENT_FAILURES,
    )
    keys = sorted(
        {r.dagster_run.tags[PARTITION_TAG] for r in failed if PARTITION_TAG in r.dagster_run.tags}
    )
    found = (quarantine_for_key(instance, source, key) for key in keys)
    return {q.key: q for q in found if q is not None}


def lift_quarantine(instance: DagsterInstance, source: SourceConfig, key: str, by: str) -> None:
    """Record on the file's partition that it may be tried again."""
    instance.report_runless_asset_event(
        AssetObservation(
            asset_key=file_asset_key(source),
            partition=key,
            description=f"quarantine lifted by {by}: the next tick imports it first",
            metadata={LIFTED_METADATA: by},
        )
    )


def quarantine_evaluation(
    source: SourceConfig, quarantined: dict[str, Quarantine]
) -> AssetCheckEvaluation:
    """The source's ``quarantine`` check: red while any of its files is set aside."""
    rows = [[q.key, q.failed_runs, q.last_run_id, q.last_error] for q in quarantined.values()]
    return AssetCheckEvaluation(
        asset_key=file_asset_key(source),
        check_name=QUARANTINE_CHECK,
        passed=not quarantined,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "quarantined_files": len(quarantined),
            "files": MetadataValue.md(
                markdown_table(["key", "failed runs", "last run", "last error"], rows)
            ),
            "how_to_lift": f"kmdagster retry {source.name} KEY, or launch the partition "
            f"with the tag {RETRY_TAG}=true",
        },
    )


def build_quarantine_check(source: SourceConfig) -> AssetChecksDefinition:
    @asset_check(
        asset=file_asset_key(source),
        name=QUARANTINE_CHECK,
        description=(
            "Fails while a file of this source is quarantined: its import runs failed "
            f"{source.quarantine_after_failed_runs} times in a row "
            "(quarantine_after_failed_runs), so later files went first. Lift it with "
            f"`kmdagster retry {source.name} KEY` or a launch tagged {RETRY_TAG}=true."
        ),
    )
    def quarantine_check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        evaluation = quarantine_evaluation(source, quarantined_files(context.instance, source))
        return AssetCheckResult(
            passed=evaluation.passed, severity=evaluation.severity, metadata=evaluation.metadata
        )

    return quarantine_check
