"""Run tags, and the one-import-per-source rule Dagster enforces with them.

The rule lives in the instance's run queue: ``deploy/dagster.yaml`` limits runs tagged
``kmdagster/source`` to one per value (and runs tagged ``kmdagster/one_writer`` to one in
all: a warehouse that admits one writing process, such as a DuckDB file). Underneath, the
ledger's conditional update means two imports of one file can never commit the same
lines, whatever launched them. The schedule only avoids queuing a request behind a run
that is already going (``active_runs``).
"""

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from kmdagster.config import SourceConfig

SOURCE_TAG = "kmdagster/source"
# Set on every run that writes a warehouse one process at a time (``backends.one_writer``):
# the run queue lets one such run go at once.
ONE_WRITER_TAG = "kmdagster/one_writer"
# Dagster's run monitoring fails a run still going after this many seconds, which is how a
# run whose process died (kill -9, lost node) stops blocking its source's schedule.
MAX_RUNTIME_TAG = "dagster/max_runtime"
# Set by an import run that stopped on its time budget: what its run page says first.
OUTCOME_TAG = "kmdagster/outcome"
# Set by a run that found its file version unreadable: the file is quarantined at once.
UNREADABLE_TAG = "kmdagster/unreadable"
# Set by a run the warehouse failed (disk full, database unreachable): it does not count
# toward the file's quarantine.
WAREHOUSE_FAULT_TAG = "kmdagster/warehouse_fault"
# Set by a catch-up run's import step: the last file after its own it imported and
# reported, which its archive step archives through.
CAUGHT_UP_TAG = "kmdagster/caught_up_through"
# Set on a launch of a quarantined file's partition: lifts its quarantine.
RETRY_TAG = "kmdagster/retry"

ACTIVE_RUN_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


# Runs whose process is importing (or was, until run monitoring says it died).
RUNNING_STATUSES = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def max_runtime_seconds(source: SourceConfig) -> int:
    return int(source.time_budget_seconds) + source.run_grace_seconds


def writer_tags(one_writer: bool) -> dict[str, str]:
    """The tags of a run that writes the warehouse: ``ONE_WRITER_TAG`` when it admits one
    writing process at a time."""
    return {ONE_WRITER_TAG: "true"} if one_writer else {}


def import_run_tags(source: SourceConfig, one_writer: bool) -> dict[str, str]:
    """An import run's tags: its source, its writer limit and its maximum runtime."""
    return {
        SOURCE_TAG: source.name,
        **writer_tags(one_writer),
        MAX_RUNTIME_TAG: str(max_runtime_seconds(source)),
    }


def active_runs(instance: DagsterInstance, source: SourceConfig) -> list[DagsterRun]:
    """Runs of ``source`` queued, starting or going."""
    return list(
        instance.get_runs(
            filters=RunsFilter(tags={SOURCE_TAG: source.name}, statuses=ACTIVE_RUN_STATUSES),
            limit=5,
        )
    )
