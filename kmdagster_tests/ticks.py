"""Drive a source the way the daemon does: one sensor evaluation, one schedule tick, one run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dagster import (
    DagsterInstance,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)

from kmdagster.defs.naming import SourceNames
from kmdagster.defs.source_tick import TickCursor
from kmdagster_tests.helpers import ACCOUNTS


def report_sensor_tick(
    defs: Any, instance: DagsterInstance, healthy: bool = True, names: SourceNames = ACCOUNTS
) -> None:
    """One evaluation of the file sensor, its requests and events applied as the daemon does.

    ``healthy``: the source's health (backlog, quarantine) must have been evaluated, not
    reported as an error (the sensor registers files either way).
    """
    sensor = defs.resolve_sensor_def(names.sensor)
    with build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = sensor(context)
    if isinstance(result, SensorResult):
        if healthy:
            error = TickCursor.parse(result.cursor).health.health_error
            assert not error, f"the sensor could not evaluate the source's health: {error}"
        for request in result.dynamic_partitions_requests or []:
            name, keys = request.partitions_def_name, request.partition_keys
            if isinstance(request, DeleteDynamicPartitionsRequest):
                for key in keys:
                    instance.delete_dynamic_partition(name, key)
            else:
                instance.add_dynamic_partitions(name, keys)
        for event in result.asset_events:
            instance.report_runless_asset_event(event)


def evaluate_schedule(
    defs: Any, instance: DagsterInstance, tick: datetime, names: SourceNames = ACCOUNTS
) -> RunRequest | SkipReason:
    """The schedule's decision at ``tick``, without running anything."""
    schedule = defs.resolve_schedule_def(names.schedule)
    with build_schedule_context(
        instance=instance, scheduled_execution_time=tick, resources=defs.resources
    ) as context:
        return schedule(context)


def run_tick(
    defs: Any,
    instance: DagsterInstance,
    tick: datetime,
    must_succeed: bool = True,
    names: SourceNames = ACCOUNTS,
) -> RunRequest | SkipReason:
    """Evaluate the sensor then the schedule once, and execute the requested run."""
    report_sensor_tick(defs, instance, names=names)
    outcome = evaluate_schedule(defs, instance, tick, names)
    if isinstance(outcome, RunRequest):
        job = defs.resolve_job_def(names.job)
        result = job.execute_in_process(
            instance=instance,
            partition_key=outcome.partition_key,
            tags=outcome.tags,
            raise_on_error=False,
        )
        assert result.success or not must_succeed
    return outcome


def step_failure_message(result: Any) -> str:
    """The error of a failed run's first failed step."""
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return str(failure.step_failure_data.error)


def run_partition(
    config: Any, instance: DagsterInstance, key: str, tags: dict[str, str] | None = None
) -> Any:
    """One import run of ``key`` with ``config``'s definitions; a failure is returned."""
    from kmdagster.defs.factory import build_definitions

    job = build_definitions(config).resolve_job_def(ACCOUNTS.job)
    return job.execute_in_process(
        instance=instance, partition_key=key, tags=tags, raise_on_error=False
    )
