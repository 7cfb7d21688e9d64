"""Run tags and the one-import-per-source rule, shared by the job, schedule and asset."""

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from kmdagster.config import SourceConfig

SOURCE_TAG = "kmdagster/source"
WAREHOUSE_TAG = "kmdagster/warehouse"
# Dagster's run monitoring fails a run still going after this many seconds, which is how a
# run whose process died (kill -9, lost node) stops blocking its source's schedule.
MAX_RUNTIME_TAG = "dagster/max_runtime"
RUNTIME_GRACE_SECONDS = 900  # the last chunk, the archive copy and the run's start-up

ACTIVE_RUN_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def max_runtime_seconds(source: SourceConfig) -> int:
    return int(source.time_budget_seconds) + RUNTIME_GRACE_SECONDS


def import_run_tags(source: SourceConfig) -> dict[str, str]:
    return {
        SOURCE_TAG: source.name,
        WAREHOUSE_TAG: "duckdb",
        MAX_RUNTIME_TAG: str(max_runtime_seconds(source)),
    }


def active_runs(
    instance: DagsterInstance,
    source: SourceConfig,
    statuses: list[DagsterRunStatus] = ACTIVE_RUN_STATUSES,
    excluding_run_id: str | None = None,
) -> list[DagsterRun]:
    """Runs of ``source`` in one of ``statuses``, other than ``excluding_run_id``."""
    runs = instance.get_runs(
        filters=RunsFilter(tags={SOURCE_TAG: source.name}, statuses=statuses), limit=5
    )
    return [run for run in runs if run.run_id != excluding_run_id]
