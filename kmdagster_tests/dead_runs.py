"""Runs whose worker was killed, failed the way Dagster's run monitoring fails them, with
the test's short limits in place of production's (the kill tests)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._daemon.monitoring.run_monitoring import check_run_timeout, monitor_starting_run

from kmdagster.defs.runs import MAX_RUNTIME_TAG
from kmdagster_dev.instance_yaml import write_instance_yaml

DEAD_RUN_MAX_RUNTIME = 1  # seconds; production uses the budget plus a grace period
DEAD_RUN_START_TIMEOUT = 1  # seconds; production waits 180 (deploy/dagster.yaml)


def make_dagster_home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with deploy/dagster.yaml's run monitoring, minus the PostgreSQL
    storage, giving up on a run that never started within the test's patience."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_instance_yaml(home, start_timeout_seconds=DEAD_RUN_START_TIMEOUT)
    return home


def sleep_until(timestamp: float) -> None:
    time.sleep(max(0.0, timestamp - time.time()))


def fail_dead_runs(instance: DagsterInstance) -> int:
    """What Dagster's run monitoring daemon does to a run whose worker died: one killed
    before it started (still NOT_STARTED) fails after the start timeout, one killed while
    going after its max runtime."""
    logger = logging.getLogger("run_monitoring")
    records = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTED])
    )
    for record in records:
        if record.dagster_run.status == DagsterRunStatus.NOT_STARTED:
            sleep_until(record.create_timestamp.timestamp() + DEAD_RUN_START_TIMEOUT + 0.2)
            monitor_starting_run(instance, record, logger)
        else:
            assert record.start_time is not None
            # The run's own limit: a backfill's run moves it ahead of itself as it goes.
            limit = int(record.dagster_run.tags.get(MAX_RUNTIME_TAG, DEAD_RUN_MAX_RUNTIME))
            sleep_until(record.start_time + limit + 0.2)
            check_run_timeout(instance, record, logger, 0)
    return len(records)
