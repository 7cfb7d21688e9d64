"""Sensor and schedule evaluations against a real Dagster instance and SeaweedFS."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
from dagster import (
    AssetCheckEvaluation,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)

from kmdagster.defs.factory import build_definitions
from kmdagster.defs.file_import.pending import pending_keys
from kmdagster.defs.runs import SOURCE_TAG
from kmdagster.defs.sensors import new_partition_keys
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import ACCOUNTS, make_config

TICK = datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)
LINE = b'{"_p":"a","_t":1700000000,"_n":"x"}\n'


def evaluate_sensor(defs: Any, instance: DagsterInstance, cursor: str | None = None):
    sensor = defs.resolve_sensor_def(ACCOUNTS.sensor)
    with build_sensor_context(
        instance=instance, resources=defs.resources, cursor=cursor
    ) as context:
        return sensor(context)


def evaluate_schedule(defs: Any, instance: DagsterInstance):
    schedule = defs.resolve_schedule_def(ACCOUNTS.schedule)
    with build_schedule_context(
        instance=instance, scheduled_execution_time=TICK, resources=defs.resources
    ) as context:
        return schedule(context)


def test_pending_keys_are_alphanumeric_and_registered_only() -> None:
    assert pending_keys(["b.json", "a2.json", "a10.json"], {"b.json", "a2.json"}) == [
        "a2.json",
        "b.json",
    ]
    assert pending_keys(["a10.json", "a2.json"], {"a10.json", "a2.json"})[0] == "a10.json"
    assert pending_keys(["x.json"], set()) == []


def test_new_partition_keys_sets_aside_keys_dagster_refuses() -> None:
    to_add, unusable = new_partition_keys(
        ["accounts 1.json", "accounts...json", "accounts-a.json", "accounts-a.json"],
        {"accounts-a.json"},
    )
    assert to_add == ["accounts 1.json"]
    assert unusable == ["accounts...json"]


def test_sensor_registers_matching_keys_once(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    keys = ["accounts.json", "accounts 2 +ü,x.json", "accounts-2026.json"]
    for key in [*keys, "accounts.csv", "sub/accounts.json", "xaccounts.json", "ACCOUNTS.json"]:
        s3.put_object(Bucket=bucket, Key=key, Body=LINE)
    defs = build_definitions(make_config(s3_server, bucket, warehouse_path))

    result = evaluate_sensor(defs, instance)
    assert isinstance(result, SensorResult)
    [request] = result.dynamic_partitions_requests or []
    assert request.partitions_def_name == ACCOUNTS.partitions
    assert sorted(request.partition_keys or []) == sorted(keys)
    instance.add_dynamic_partitions(ACCOUNTS.partitions, list(request.partition_keys or []))
    # Dagster logs a tick without run requests as skipped: with what the sensor did.
    assert result.skip_reason is not None
    assert (result.skip_reason.skip_message or "").startswith("registered 3 new files (")

    # Nothing new and the file states unchanged since the cursor's report: a skip.
    again = evaluate_sensor(defs, instance, cursor=result.cursor)
    assert isinstance(again, SkipReason)


def test_sensor_paginates_past_one_listing_page(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    keys = [f"accounts-{i:05d}.json" for i in range(1005)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=LINE)
    defs = build_definitions(make_config(s3_server, bucket, warehouse_path))
    result = evaluate_sensor(defs, instance)
    assert isinstance(result, SensorResult)
    [request] = result.dynamic_partitions_requests or []
    assert sorted(request.partition_keys or []) == keys


def test_schedule_requests_first_pending_file_and_skips_when_a_run_is_active(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    for key in ["accounts-b.json", "accounts-a.json", "accounts-c.json"]:
        s3.put_object(Bucket=bucket, Key=key, Body=LINE)
    defs = build_definitions(make_config(s3_server, bucket, warehouse_path))

    nothing = evaluate_schedule(defs, instance)
    assert isinstance(nothing, SkipReason) and "nothing pending" in (nothing.skip_message or "")

    instance.add_dynamic_partitions(ACCOUNTS.partitions, ["accounts-c.json", "accounts-b.json"])
    request = evaluate_schedule(defs, instance)
    assert isinstance(request, RunRequest)
    assert request.partition_key == "accounts-b.json"
    assert request.tags[SOURCE_TAG] == "accounts"
    assert request.run_key and TICK.isoformat() in request.run_key

    job = defs.resolve_job_def(ACCOUNTS.job)
    instance.create_run_for_job(job, status=DagsterRunStatus.STARTED, tags={SOURCE_TAG: "accounts"})
    busy = evaluate_schedule(defs, instance)
    assert isinstance(busy, SkipReason) and "one at a time" in (busy.skip_message or "")


def test_reuploaded_key_is_pending_again_and_imports_as_new_file(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts.json", Body=LINE)
    defs = build_definitions(make_config(s3_server, bucket, warehouse_path))
    instance.add_dynamic_partitions(ACCOUNTS.partitions, ["accounts.json"])
    job = defs.resolve_job_def(ACCOUNTS.job)
    assert job.execute_in_process(instance=instance, partition_key="accounts.json").success
    assert isinstance(evaluate_schedule(defs, instance), SkipReason)

    s3.put_object(Bucket=bucket, Key="accounts.json", Body=LINE + LINE.replace(b'"x"', b'"y"'))
    request = evaluate_schedule(defs, instance)
    assert isinstance(request, RunRequest) and request.partition_key == "accounts.json"
    assert job.execute_in_process(instance=instance, partition_key="accounts.json").success
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        rows = con.execute("SELECT count(DISTINCT file_etag), count(*) FROM km_events").fetchall()
        statuses = con.execute("SELECT status, archived_key FROM km_import_files").fetchall()
    assert rows == [(2, 3)]
    assert [s for s, _ in statuses] == ["archived", "archived"]
    assert len({k for _, k in statuses}) == 2  # the second copy did not overwrite the first


def check_results(result: SensorResult) -> dict[str, Any]:
    """The check evaluations a sensor result reports, by check name."""
    return {
        event.check_name: event
        for event in result.asset_events
        if isinstance(event, AssetCheckEvaluation)
    }


def test_sensor_registers_files_when_the_source_health_cannot_be_evaluated(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    s3.put_object(Bucket=bucket, Key="accounts-1.json", Body=LINE)
    warehouse_path.write_text("not a database\n")  # the ledger cannot be read
    defs = build_definitions(make_config(s3_server, bucket, warehouse_path))

    failing = evaluate_sensor(defs, instance)
    assert isinstance(failing, SensorResult)
    [request] = failing.dynamic_partitions_requests or []
    assert list(request.partition_keys or []) == ["accounts-1.json"]
    checks = check_results(failing)
    assert set(checks) == {"backlog", "quarantine"}
    for check in checks.values():
        assert not check.passed
        assert str(warehouse_path) in check.metadata["error"].value
    instance.add_dynamic_partitions(ACCOUNTS.partitions, ["accounts-1.json"])

    # The same error at the next tick is not reported again; a new file still registers.
    s3.put_object(Bucket=bucket, Key="accounts-2.json", Body=LINE)
    again = evaluate_sensor(defs, instance, cursor=failing.cursor)
    assert isinstance(again, SensorResult) and check_results(again) == {}
    [request] = again.dynamic_partitions_requests or []
    assert list(request.partition_keys or []) == ["accounts-2.json"]
    instance.add_dynamic_partitions(ACCOUNTS.partitions, ["accounts-2.json"])

    # Once the warehouse reads again (here: no file yet), both checks are evaluated anew.
    warehouse_path.unlink()
    healed = evaluate_sensor(defs, instance, cursor=again.cursor)
    assert isinstance(healed, SensorResult)
    checks = check_results(healed)
    assert checks["backlog"].metadata["backlog_files"].value == 2
    assert checks["quarantine"].passed
