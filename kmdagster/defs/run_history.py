"""Quarantine read from Dagster's own records, lifted from the CLI or by a tagged launch.

A file's import runs are the runs tagged with its source and partition; the rule is in
``kmdagster.quarantine``. ``kmdagster retry SOURCE KEY`` lifts a quarantine by recording
an observation of the file's partition (visible in the UI); a run launched from the UI
with the tag ``kmdagster/retry: true`` gives the file a new start too. Either way the file
is first in line again and resumes from its committed offset.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING

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
    RunRecord,
    RunsFilter,
    asset_check,
)
from dagster_aws.s3 import S3Resource

from kmdagster.config import SourceConfig, WarehouseSettings
from kmdagster.defs.naming import QUARANTINE_CHECK, SourceNames
from kmdagster.defs.resources import TICK_LEDGER_WAIT_SECONDS, WarehouseResource
from kmdagster.defs.runs import RETRY_TAG, SOURCE_TAG, UNREADABLE_TAG, WAREHOUSE_FAULT_TAG
from kmdagster.defs.specs import SourceSpecs
from kmdagster.markdown import markdown_table
from kmdagster.quarantine import FinishedRun, Quarantine, quarantine_of
from kmdagster.s3.objects import S3File, list_root_files
from kmdagster.status import RunFailure, RunOutcomes
from kmdagster.warehouse.backends import read_warehouse
from kmdagster.warehouse.database import WarehouseSchemaError, WarehouseUnavailable
from kmdagster.warehouse.warehouse import Warehouse

if TYPE_CHECKING:  # Dagster's error records, as its step failures carry them
    from dagster_shared.error import SerializableErrorInfo

PARTITION_TAG = "dagster/partition"
LIFTED_METADATA = "quarantine_lifted"
RECENT_FAILURES = 200  # failed runs of a source looked at to find quarantined files


class RunProgress:
    """Which of a file's runs advanced the version of it at the bucket root now, as the
    warehouse ledger says. The ledger is read only when asked (a file reaching its failure
    threshold): through a run's own open connection, or read-only for a moment."""

    def __init__(
        self,
        source: SourceConfig,
        root_files: list[S3File],
        ledger: Callable[[], AbstractContextManager[Warehouse | None]],
    ) -> None:
        self._source = source
        self._root_etags = {file.key: file.etag for file in root_files}
        self._ledger = ledger

    @classmethod
    def read_only(
        cls, settings: WarehouseSettings, source: SourceConfig, root_files: list[S3File]
    ) -> "RunProgress":
        """Each question opens the ledger read-only, waiting briefly for a running import."""
        return cls(source, root_files, lambda: read_warehouse(settings, TICK_LEDGER_WAIT_SECONDS))

    @classmethod
    def at_root_now(
        cls, client: object, source: SourceConfig, settings: WarehouseSettings
    ) -> "RunProgress":
        """``read_only`` against the versions at the source's bucket root now."""
        return cls.read_only(settings, source, list_root_files(client, source))

    @classmethod
    def through(
        cls, warehouse: Warehouse, source: SourceConfig, root_files: list[S3File]
    ) -> "RunProgress":
        """Questions go through a run's own open connection."""
        return cls(source, root_files, lambda: nullcontext(warehouse))

    def runs_that_advanced(self, key: str, run_ids: list[str]) -> set[str] | None:
        """Those of ``run_ids`` that committed a chunk of the version at the root, or
        ``None`` when the ledger cannot be read now."""
        etag = self._root_etags.get(key)
        if etag is None:
            return set()  # gone from the root: no version of it there to have advanced
        try:
            with self._ledger() as warehouse:
                if warehouse is None:
                    return set()
                return warehouse.runs_that_advanced(self._source.name, key, etag, run_ids)
        except (WarehouseUnavailable, WarehouseSchemaError):
            return None


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
            unreadable=UNREADABLE_TAG in record.dagster_run.tags,
            warehouse_fault=WAREHOUSE_FAULT_TAG in record.dagster_run.tags,
        )
        for record in records
    ]


def _lifted_at(
    instance: DagsterInstance, source: SourceConfig, key: str, limit: int
) -> float | None:
    # Each run records at most one observation of its file, so a lift newer than the
    # oldest run of a streak is among its newest ``limit`` observations.
    found = instance.fetch_observations(
        AssetRecordsFilter(asset_key=SourceNames.of(source).file, asset_partitions=[key]),
        limit=limit,
    )
    for record in found.records:
        observation = record.asset_observation
        if observation is not None and LIFTED_METADATA in observation.metadata:
            return record.timestamp
    return None


def cause_of(error: "SerializableErrorInfo") -> "SerializableErrorInfo":
    """The error under Dagster's wrappers (``Error occurred while executing op ...:``)."""
    while error.cause is not None and error.cls_name and error.cls_name.startswith("Dagster"):
        error = error.cause
    return error


def failure_message(instance: DagsterInstance, run_id: str) -> str:
    """Why the run failed, as its failed step (or the run) said it."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data if entry.dagster_event else None
        if data is not None and data.user_failure_data and data.user_failure_data.description:
            return data.user_failure_data.description
        if data is not None and data.error is not None:
            return cause_of(data.error).message.strip()
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE):
        return entry.message or ""
    return ""


def _quarantine_without_error(
    instance: DagsterInstance, source: SourceConfig, key: str, progress: RunProgress
) -> Quarantine | None:
    threshold = source.quarantine_after_failed_runs
    runs = _finished_runs(instance, source, key, threshold)
    at_once = bool(runs) and runs[0].unreadable
    if not at_once and (len(runs) < threshold or any(run.succeeded for run in runs)):
        return None  # the usual case, in one query
    lifted_at = _lifted_at(instance, source, key, threshold + 1)
    if quarantine_of(key, runs, lifted_at, threshold) is None:
        return None  # lifted or retried: no need to ask the ledger
    advanced = progress.runs_that_advanced(key, [run.run_id for run in runs])
    if advanced is None:
        return None  # the ledger cannot say now: a file is never set aside on a guess
    runs = [replace(run, advanced=run.run_id in advanced) for run in runs]
    return quarantine_of(key, runs, lifted_at, threshold)


def is_quarantined(
    instance: DagsterInstance, source: SourceConfig, key: str, progress: RunProgress
) -> bool:
    """Whether the file's last ``quarantine_after_failed_runs`` runs all failed without
    advancing it (for the schedule, which needs no error message and so reads no event
    log)."""
    return _quarantine_without_error(instance, source, key, progress) is not None


def quarantine_for_key(
    instance: DagsterInstance, source: SourceConfig, key: str, progress: RunProgress
) -> Quarantine | None:
    """The file's quarantine, with its last run's error, if it is quarantined."""
    found = _quarantine_without_error(instance, source, key, progress)
    if found is None:
        return None
    return replace(found, last_error=failure_message(instance, found.last_run_id))


def quarantined_files(
    instance: DagsterInstance, source: SourceConfig, progress: RunProgress
) -> dict[str, Quarantine]:
    """Every quarantined file of the source, by key, among its recently failed runs."""
    failed = instance.get_run_records(
        RunsFilter(tags={SOURCE_TAG: source.name}, statuses=[DagsterRunStatus.FAILURE]),
        limit=RECENT_FAILURES,
    )
    keys = sorted(
        {r.dagster_run.tags[PARTITION_TAG] for r in failed if PARTITION_TAG in r.dagster_run.tags}
    )
    found = (quarantine_for_key(instance, source, key, progress) for key in keys)
    return {q.key: q for q in found if q is not None}


def last_run_failures(
    instance: DagsterInstance,
    source: SourceConfig,
    at_root: set[str],
    limit: int = RECENT_FAILURES,
) -> dict[str, RunFailure]:
    """Each file at the bucket root (``at_root``) whose latest finished import run (among
    the source's last ``limit``) failed, with that run's error, whatever failed: the
    warehouse, S3 or the code. Only those files' failures are read from the event log."""
    records = instance.get_run_records(
        RunsFilter(
            tags={SOURCE_TAG: source.name},
            statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE],
        ),
        limit=limit,
    )
    latest: dict[str, RunRecord] = {}
    for record in records:  # newest first
        key = record.dagster_run.tags.get(PARTITION_TAG)
        if key is not None and key in at_root:
            latest.setdefault(key, record)
    return {
        key: RunFailure(
            run_id=record.dagster_run.run_id,
            error=failure_message(instance, record.dagster_run.run_id),
            created=record.create_timestamp,
        )
        for key, record in latest.items()
        if record.dagster_run.status == DagsterRunStatus.FAILURE
    }


def run_outcomes(
    instance: DagsterInstance,
    source: SourceConfig,
    settings: WarehouseSettings,
    root_files: list[S3File],
) -> RunOutcomes:
    """The source's quarantined files and the files at the root whose last run failed."""
    progress = RunProgress.read_only(settings, source, root_files)
    return RunOutcomes(
        quarantined=quarantined_files(instance, source, progress),
        failures=last_run_failures(instance, source, {file.key for file in root_files}),
    )


def lift_quarantine(instance: DagsterInstance, source: SourceConfig, key: str, by: str) -> None:
    """Record on the file's partition that it may be tried again."""
    instance.report_runless_asset_event(
        AssetObservation(
            asset_key=SourceNames.of(source).file,
            partition=key,
            description=f"quarantine lifted by {by}: the next tick imports it first",
            metadata={LIFTED_METADATA: by},
        )
    )


def quarantine_evaluation(
    source: SourceConfig, quarantined: dict[str, Quarantine]
) -> AssetCheckEvaluation:
    """The source's ``quarantine`` check: red while any of its files is set aside."""
    rows = [
        [q.key, "unreadable: set aside at once" if q.unreadable else q.failed_runs]
        + [q.last_run_id, q.last_error]
        for q in quarantined.values()
    ]
    return AssetCheckEvaluation(
        asset_key=SourceNames.of(source).file,
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


def build_quarantine_check(specs: SourceSpecs) -> AssetChecksDefinition:
    source, spec = specs.source, specs.quarantine_check

    @asset_check(asset=spec.asset_key, name=spec.name, description=spec.description)
    def quarantine_check(
        context: AssetCheckExecutionContext, km_s3: S3Resource, km_warehouse: WarehouseResource
    ) -> AssetCheckResult:
        progress = RunProgress.at_root_now(km_s3.get_client(), source, km_warehouse.settings)
        evaluation = quarantine_evaluation(
            source, quarantined_files(context.instance, source, progress)
        )
        return AssetCheckResult(
            passed=evaluation.passed, severity=evaluation.severity, metadata=evaluation.metadata
        )

    return quarantine_check
