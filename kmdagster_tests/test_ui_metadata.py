"""What the Dagster UI shows: per-table metadata, data checks, progress, re-runs, rejects files.

materialize() runs over SeaweedFS and a DuckDB file, as in test_import_asset.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    SensorResult,
    build_sensor_context,
)

from kmdagster.defs.backlog import backlog_outcome, outcome_fingerprint
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.file_import.pending import pending_keys
from kmdagster.defs.source_tick import TickCursor
from kmdagster.km_format.split import MAX_RAW_LINE_CHARS
from kmdagster.markdown import file_states_at_a_glance, file_states_markdown
from kmdagster.quarantine import Quarantine
from kmdagster.s3.objects import S3AccessError, S3File
from kmdagster.s3.rejects_file import rejects_key_for, write_rejects_file
from kmdagster.status import RunFailure, RunOutcomes, backlog, file_states, read_source_status
from kmdagster.warehouse.warehouse import LedgerRow
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import ACCOUNTS, make_config
from kmdagster_tests.test_import_asset import KEY, materialize_partition, only_observation, query
from kmdagster_tests.ticks import run_tick

TABLE_COUNTS = ("events", "properties", "aliases", "rejects")


def materializations(result: Any) -> dict[str, Any]:
    """The metadata of each materialized asset of the run, by the asset's last name."""
    return {
        event.asset_key.path[-1]: event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }


def test_each_table_reports_its_own_rows_schema_and_top_names(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    file = km_file(seed=5, repeats=20)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)

    result = materialize_partition(make_config(s3_server, bucket, warehouse_path), instance, KEY)

    assert result.success
    tables = materializations(result)
    for name in TABLE_COUNTS:
        metadata = tables[f"km_{name}"]
        assert metadata["dagster/row_count"].value == getattr(file, name), name
        assert metadata["dagster/partition_row_count"].value == getattr(file, name), name
        assert metadata["dagster/table_name"].value == f"km_{name}"
        columns = [c.name for c in metadata["dagster/column_schema"].value.columns]
        with duckdb.connect(str(warehouse_path), read_only=True) as con:
            described = [row[0] for row in con.execute(f"DESCRIBE km_{name}").fetchall()]
        assert columns == described
        assert metadata["already_imported"].value is False
    top_events = tables["km_events"]["top_events"].value
    assert "| signed up " in top_events and "Signed Up" in top_events
    assert "viewed  page" in top_events  # the comma became a space, as in the warehouse
    assert "| url " in tables["km_properties"]["top_properties"].value
    by_reason = tables["km_rejects"]["rejects_by_reason"].value
    assert "invalid_json" in by_reason and "timestamp_in_milliseconds" in by_reason
    assert tables["km_rejects"]["reject_rate_percent"].value == pytest.approx(
        100 * file.rejects / (file.lines - file.blanks), abs=0.001
    )
    archive = tables["archived_file"]
    assert archive["rejects_key"].value == rejects_key_for(archive["archived_key"].value)
    assert archive["already_archived"].value is False


def test_data_checks_run_per_file_and_reject_rate_warns_over_its_threshold(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    file = km_file(seed=6, repeats=10)  # 2 of 7 non-blank lines rejected: 28.6%
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    config = make_config(s3_server, bucket, warehouse_path, reject_rate_warn_percent=25)

    result = materialize_partition(config, instance, KEY)

    assert result.success  # a warning does not fail the run or stop the archive
    evaluations = result.get_asset_check_evaluations()
    assert {e.partition for e in evaluations} == {KEY}
    outcome = {(e.asset_key.path[-1], e.check_name): e for e in evaluations}
    assert len(outcome) == 6
    failed = {key for key, e in outcome.items() if not e.passed}
    assert failed == {("km_rejects", "reject_rate")}
    assert outcome[("km_rejects", "reject_rate")].severity == AssetCheckSeverity.WARN
    assert outcome[("km_rejects", "lines_accounted_for")].metadata["lines_read"].value == 80


def test_checks_fail_when_the_warehouse_disagrees_with_the_ledger(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    s3.put_object(Bucket=bucket, Key=KEY, Body=km_file(seed=8, repeats=5).data)
    config = make_config(s3_server, bucket, warehouse_path, reject_rate_warn_percent=50)
    assert materialize_partition(config, instance, KEY).success
    with duckdb.connect(str(warehouse_path)) as con:  # a row loaded twice by someone else
        con.execute("INSERT INTO km_event_rows SELECT * FROM km_event_rows LIMIT 1")

    again = materialize_partition(config, instance, KEY)

    assert again.success
    failed = {
        (e.asset_key.path[-1], e.check_name)
        for e in again.get_asset_check_evaluations()
        if not e.passed
    }
    assert failed == {("km_events", "rows_match_ledger")}
    [check] = [
        e
        for e in again.get_asset_check_evaluations()
        if e.asset_key.path[-1] == "km_events" and e.check_name == "rows_match_ledger"
    ]
    assert check.metadata["duplicate_rows"].value == 1
    rows, committed = (check.metadata[k].value for k in ("rows_in_warehouse", "rows_committed"))
    assert isinstance(committed, int) and rows == committed + 1


def test_budget_stopped_runs_report_progress_and_check_what_is_committed(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    file = km_file(seed=9, repeats=30)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    config = make_config(
        s3_server, bucket, warehouse_path, chunk_bytes=1024, time_budget_seconds=0.001
    )
    observations = []
    for _ in range(2):
        result = materialize_partition(config, instance, KEY)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 6 and all(c.passed for c in checks if c.check_name != "reject_rate")
        assert materializations(result) == {}
        observations.append(only_observation(result).metadata)

    first, second = observations
    assert [o["import_runs"].value for o in observations] == [1, 2]
    assert 0 < first["percent_done"].value < second["percent_done"].value < 100
    assert second["run_start_offset"].value == first["next_offset"].value
    assert isinstance(first["run_lines_per_second"].value, float)
    assert {k: type(v) for k, v in first.items()} == {k: type(v) for k, v in second.items()}


def test_rerun_of_an_archived_file_loads_nothing_and_stays_green(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    file = km_file(seed=10, repeats=8)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    config = make_config(s3_server, bucket, warehouse_path, reject_rate_warn_percent=50)
    first = materialize_partition(config, instance, KEY)
    archived = materializations(first)["archived_file"]["archived_key"].value
    listing = s3.list_objects_v2(Bucket=bucket)["Contents"]

    again = materialize_partition(config, instance, KEY)

    assert again.success
    tables = materializations(again)
    assert set(tables) == {
        "km_events",
        "km_properties",
        "km_aliases",
        "km_rejects",
        "archived_file",
    }
    assert all(tables[f"km_{name}"]["already_imported"].value for name in TABLE_COUNTS)
    assert tables["km_events"]["dagster/row_count"].value == file.events
    assert tables["archived_file"]["already_archived"].value is True
    assert tables["archived_file"]["archived_key"].value == archived
    assert all(e.passed for e in again.get_asset_check_evaluations())
    messages = [entry.user_message for entry in instance.all_logs(again.run_id)]
    assert any("was already imported" in m and archived in m for m in messages)
    assert query(warehouse_path, "SELECT count(*) FROM km_events") == [(file.events,)]
    assert s3.list_objects_v2(Bucket=bucket)["Contents"] == listing


def test_rejects_file_lists_every_rejected_line_located_with_long_lines_truncated(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    long_bad = '{"_p": "x", "_t": 1700000000, "note": "' + "é" * 3000 + '"'  # no closing brace
    data = km_file(seed=12, repeats=3).data + long_bad.encode() + b"\n"
    s3.put_object(Bucket=bucket, Key=KEY, Body=data)

    result = materialize_partition(make_config(s3_server, bucket, warehouse_path), instance, KEY)

    rejects_key = materializations(result)["archived_file"]["rejects_key"].value
    body = s3.get_object(Bucket=bucket, Key=rejects_key)["Body"].read().decode()
    written = [json.loads(line) for line in body.splitlines()]
    expected = query(
        warehouse_path,
        "SELECT line_no, reason, raw_line, byte_offset, error_position FROM km_rejects "
        "ORDER BY line_no",
    )
    assert [(r["line_no"], r["reason"]) for r in written] == [(n, r) for n, r, *_ in expected]
    # Each line is where its byte offset says, in the file as uploaded.
    line_starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    for line_no, _, _, offset, _ in expected:
        assert offset == line_starts[line_no - 1]
    assert [(r["byte_offset"], r["error_position"]) for r in written] == [
        (offset, position) for *_, offset, position in expected
    ]
    last = written[-1]
    assert last["line_no"] == 25 and last["raw_chars"] == len(long_bad)
    assert last["error_position"] == len(long_bad) + 1  # the object never closes
    assert last["raw_line"] == long_bad[:MAX_RAW_LINE_CHARS]
    assert written[0]["raw_line"] == expected[0][2]  # short lines are kept whole


def test_rejects_file_never_replaces_another_object(s3: Any, bucket: str) -> None:
    key = "completed_imports/2026/11/30/accounts.json.rejects.jsonl"
    s3.put_object(Bucket=bucket, Key=key, Body=b"someone else's\n")
    with pytest.raises(S3AccessError, match="already holds another object"):
        write_rejects_file(s3, bucket, key, '"abc"', [])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"someone else's\n"


def test_sensor_reports_landed_files_and_the_backlog_in_import_order(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    keys = ["accounts.1764.json", "accounts-zz.json", "accounts-a.json"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=km_file(seed=1, repeats=1).data)
    config = make_config(s3_server, bucket, warehouse_path, backlog_warn_hours=0.001)
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def(ACCOUNTS.sensor)

    with build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = sensor(context)

    assert isinstance(result, SensorResult)
    materialized = [e for e in result.asset_events if isinstance(e, AssetMaterialization)]
    landed = [e for e in materialized if e.asset_key.path[-1] == "s3_file"]
    assert sorted(str(e.partition) for e in landed) == sorted(keys)
    [glance] = [e for e in materialized if e.asset_key.path[-1] == "file_states"]
    assert glance.metadata["pending_files"].value == len(keys)
    # More wait than a tick takes: the glance says how to import them now.
    assert str(glance.metadata["import_now"].value).startswith(
        "to import the 3 waiting files now, not 1 a tick: `kmdagster backfill accounts`"
    )
    assert "backlog_done_by" in glance.metadata  # the same finish time as the check's
    assert {e.asset_key.path[-1] for e in landed} == {"s3_file"}
    checks = {e.check_name: e for e in result.asset_events if isinstance(e, AssetCheckEvaluation)}
    backlog = checks["backlog"]
    assert backlog.check_name == "backlog" and backlog.passed
    assert checks["quarantine"].passed  # reported once at the first tick, green
    table = str(backlog.metadata["files"].value)
    positions = [table.index(f"| {n} ") for n in (1, 2, 3)]
    order = [table.index(key) for key in sorted(keys)]  # the schedule's order
    assert positions == sorted(positions) and order == sorted(order)
    assert backlog.metadata["backlog_files"].value == 3
    # When the schedule is done with them (one a tick, hourly) and how to import them now.
    done_by = backlog.metadata["backlog_done_by"].value
    assert isinstance(done_by, float)
    ticks_left = datetime.fromtimestamp(done_by, timezone.utc) - datetime.now(timezone.utc)
    assert timedelta(hours=2, minutes=-1) < ticks_left <= timedelta(hours=3)
    assert str(backlog.metadata["import_now"].value).startswith("to import the 3 waiting files")

    # Once the oldest file has waited past the threshold (0.001 h), the check warns, and
    # its fingerprint differs from the one the cursor holds, so the next tick reports it.
    status = read_source_status(s3, config.sources[0], config.warehouse, 1.0)
    written = max(state.waiting_since for state in status.states if state.waiting_since)
    passed, metadata = backlog_outcome(config.sources[0], status, written + timedelta(seconds=4))
    assert not passed and metadata["oldest_waiting_hours"] >= 0.001
    assert outcome_fingerprint(passed, metadata) != TickCursor.parse(result.cursor).health.backlog


def test_a_file_whose_last_run_failed_is_failed_with_that_runs_error() -> None:
    written = datetime(2026, 11, 26, 9, tzinfo=timezone.utc)
    partial = LedgerRow(
        "accounts", "accounts.1.json", '"a"', 10, "in_progress", 4, 1, 1, 0, 0,
        None, None, None, None, None,
    )  # fmt: skip
    root = [
        S3File("accounts.1.json", '"a"', 10, written),
        S3File("accounts.2.json", '"b"', 10, written),
        S3File("accounts.3.json", '"c"', 10, written),
    ]
    busy = "the warehouse w.duckdb is held by process 42 (python notebook.py)"
    failures = {
        "accounts.1.json": RunFailure("run-1", busy, written + timedelta(minutes=5)),
        "accounts.2.json": RunFailure("run-2", "boom", written + timedelta(minutes=6)),
        # This failure was an earlier version's: the file was written again since.
        "accounts.3.json": RunFailure("run-3", "old", written - timedelta(minutes=1)),
    }
    states = {s.key: s for s in file_states(root, [partial], RunOutcomes(failures=failures))}
    assert (states["accounts.1.json"].state, states["accounts.1.json"].error) == ("failed", busy)
    assert states["accounts.1.json"].next_offset == 4  # it resumes there
    assert (states["accounts.2.json"].state, states["accounts.2.json"].error) == ("failed", "boom")
    assert (states["accounts.3.json"].state, states["accounts.3.json"].error) == ("pending", None)
    assert [s.queue_position for s in states.values()] == [1, 2, 3]  # still in the backlog


def test_the_file_states_at_a_glance_name_each_state_apart() -> None:
    root = [S3File(f"accounts.{n}.json", f'"{n}"', 10) for n in range(1, 10)]
    partial = LedgerRow(
        "accounts", "accounts.1.json", '"1"', 10, "in_progress", 4, 1, 1, 0, 0,
        None, None, None, None, None,
    )  # fmt: skip
    archived = LedgerRow(
        "accounts", "accounts.0.json", '"0"', 10, "archived", 10, 1, 1, 0, 0,
        None, None, "completed_imports/2026/11/26/accounts.0.json", None, None,
    )  # fmt: skip
    outcomes = RunOutcomes(
        quarantined={"accounts.3.json": Quarantine("accounts.3.json", 3, "r3", "Access Denied")},
        failures={
            "accounts.2.json": RunFailure("r2", "the warehouse is busy", datetime.now(timezone.utc))
        },
    )
    glance = file_states_at_a_glance(file_states(root, [partial, archived], outcomes))
    assert glance["next_file"] == glance["in_progress"] == "accounts.1.json 40% (resume at byte 4)"
    assert glance["failed"] == "accounts.2.json: the warehouse is busy"
    assert glance["quarantined"] == "accounts.3.json: Access Denied"
    assert glance["pending"] == (
        "accounts.4.json; accounts.5.json; accounts.6.json; accounts.7.json; accounts.8.json; "
        "and 1 more"
    )
    assert (glance["in_progress_files"], glance["failed_files"], glance["pending_files"]) == (
        1,
        1,
        6,
    )
    assert glance["quarantined_files"] == glance["archived_files"] == 1
    assert glance["imported_files"] == 0 and "imported" not in glance


def test_a_file_back_at_the_root_with_imported_content_is_reimported_identical() -> None:
    archived = LedgerRow(
        "accounts", "accounts.1.json", '"a"', 10, "archived", 10, 1, 1, 0, 0,
        None, None, "completed_imports/2026/11/26/accounts.1.json", None, None,
    )  # fmt: skip
    root = [S3File("accounts.1.json", '"a"', 10), S3File("accounts.2.json", '"b"', 10)]
    quarantined = {"accounts.2.json": Quarantine("accounts.2.json", 3, "run-id", "Access Denied")}

    states = file_states(root, [archived], RunOutcomes(quarantined=quarantined))

    by_key = {s.key: s for s in states}
    again = by_key["accounts.1.json"]
    assert (again.state, again.queue_position, again.at_bucket_root) == (
        "reimported_identical",
        1,  # in the backlog: the next run archives it again
        True,
    )
    assert backlog(states) == [again]
    set_aside = by_key["accounts.2.json"]
    assert (set_aside.state, set_aside.queue_position, set_aside.error) == (
        "quarantined",
        None,
        "Access Denied",
    )
    assert "| reimported_identical " in file_states_markdown(states)


def test_file_states_list_the_backlog_in_the_schedules_order_then_the_rest() -> None:
    root = [S3File(key, f'"{key}"', 10) for key in ("accounts.176.json", "accounts-zz.json")]
    done = LedgerRow(
        "accounts", "accounts-a.json", '"a"', 10, "archived", 10, 1, 1, 0, 0,
        None, None, "completed_imports/x", None, None,
    )  # fmt: skip
    states = file_states(root, [done])

    assert [(s.queue_position, s.key) for s in states] == [
        (1, "accounts-zz.json"),  # byte order, as pending_keys sorts them
        (2, "accounts.176.json"),
        (None, "accounts-a.json"),
    ]
    assert pending_keys([f.key for f in root], {f.key for f in root})[0] == "accounts-zz.json"
    table = file_states_markdown(states, limit=1)
    assert "accounts-zz.json" in table and "accounts.176.json" not in table
    assert "1 more files not shown" in table


def latest_file_event(instance: DagsterInstance, key: str, observed: bool) -> Any:
    """The newest materialization (or observation) of the file asset's partition ``key``."""
    records_filter = AssetRecordsFilter(asset_key=ACCOUNTS.file, asset_partitions=[key])
    if observed:
        [record] = instance.fetch_observations(records_filter, limit=1).records
        return record.asset_observation
    [record] = instance.fetch_materializations(records_filter, limit=1).records
    return record.asset_materialization


def test_the_file_asset_follows_the_ledger_through_a_re_send_and_the_archive(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, instance: DagsterInstance
) -> None:
    """A version sent again while partly imported is materialized anew (its ETag, with the
    version it replaces); the superseded version is counted at a glance; once archived, the
    partition's latest observation says so."""
    first = s3.put_object(Bucket=bucket, Key=KEY, Body=km_file(seed=1, repeats=60).data)
    config = make_config(
        s3_server, bucket, warehouse_path, chunk_bytes=1024, time_budget_seconds=0.001
    )
    defs = build_definitions(config)
    tick = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
    run_tick(defs, instance, tick)  # registers it and imports one chunk
    assert latest_file_event(instance, KEY, observed=True).metadata["status"].value == (
        "in_progress"
    )
    second = s3.put_object(Bucket=bucket, Key=KEY, Body=km_file(seed=2, repeats=2).data)

    with build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = defs.resolve_sensor_def(ACCOUNTS.sensor)(context)
    assert isinstance(result, SensorResult)
    materialized = [e for e in result.asset_events if isinstance(e, AssetMaterialization)]
    [landed] = [e for e in materialized if e.asset_key == ACCOUNTS.file]
    assert landed.metadata["etag"].value == second["ETag"]
    assert f"replaces {first['ETag']} (superseded)" in (landed.description or "")
    [glance] = [e for e in materialized if e.asset_key.path[-1] == "file_states"]
    assert glance.metadata["superseded_files"].value == 1
    assert first["ETag"] in str(glance.metadata["superseded"].value)

    for hour in range(1, 20):
        run_tick(defs, instance, tick + timedelta(hours=hour))
        if not s3.list_objects_v2(Bucket=bucket, Prefix=KEY).get("KeyCount"):
            break
    archived = latest_file_event(instance, KEY, observed=True)
    assert archived.metadata["status"].value == "archived"
    assert archived.metadata["etag"].value == second["ETag"]
    assert (
        latest_file_event(instance, KEY, observed=False).metadata["etag"].value == (second["ETag"])
    )
