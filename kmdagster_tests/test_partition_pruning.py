"""Partitions that stay bounded: the sensor removes the partitions of files archived long
ago and never those of files still to import; the ledger keeps every file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DeleteDynamicPartitionsRequest, SensorResult

from kmdagster.defs.factory import build_definitions
from kmdagster.defs.partition_pruning import MAX_REMOVED_PER_TICK, keys_to_prune
from kmdagster.status import read_source_status
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import ACCOUNTS, make_config
from kmdagster_tests.test_automation import LINE, evaluate_sensor

OLD_ARCHIVED = 2_500  # archived 60 days ago: more than one tick removes
RECENT = 7_500  # archived 3 days ago


def ledger_rows(path: Path, keys: str, status: str, days_ago: int, count: int = 1) -> None:
    """``count`` ledger rows of ``keys`` (a SQL expression over ``i``, from 0) as the
    import and archive leave them, last changed ``days_ago``."""
    with DuckDBWarehouse.connect(path) as warehouse:
        warehouse.database.execute(
            "INSERT INTO km_import_files (source, file_key, file_etag, size_bytes, status, "
            "next_offset, lines_read, lines_loaded, lines_rejected, lines_blank, updated_at, "
            f"file_id) SELECT 'accounts', {keys}, '\"{status}' || i || '\"', 10, '{status}', "
            f"10, 1, 1, 0, 0, now() - INTERVAL {days_ago} DAY, nextval('km_file_ids') "
            f"FROM range({count}) AS t(i)"
        )


def test_keys_to_prune_are_registered_and_gone_from_the_root() -> None:
    assert keys_to_prune({"a", "b", "c"}, {"b"}, ["a", "b", "z"]) == ["a"]


def removals(result: Any) -> list[str]:
    return [
        key
        for request in getattr(result, "dynamic_partitions_requests", None) or []
        if isinstance(request, DeleteDynamicPartitionsRequest)
        for key in request.partition_keys
    ]


def test_the_sensor_removes_partitions_of_files_archived_long_ago_only(
    s3_server: SeaweedS3, s3: Any, bucket: str, tmp_path: Path, instance: DagsterInstance
) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    key = "'accounts.' || lpad(i::VARCHAR, 5, '0') || '.json'"
    ledger_rows(warehouse, key, "archived", 60, OLD_ARCHIVED)
    ledger_rows(warehouse, key.replace("i::", "(i + 2500)::"), "archived", 3, RECENT)
    # Not to remove either: failed, pending, and one archived long ago but sent again (at
    # the root); to remove: a key whose older version was superseded.
    failed, pending = "accounts-failed.json", "accounts-new.json"
    resent, replaced = "accounts.00007.json", "accounts-replaced.json"
    for single, status, days in (
        (failed, "failed", 60),
        (pending, "pending", 60),
        (replaced, "superseded", 70),
        (replaced, "archived", 60),
    ):
        ledger_rows(warehouse, f"'{single}'", status, days)
    for single in (resent, failed, pending):
        s3.put_object(Bucket=bucket, Key=single, Body=LINE)
    registered = [f"accounts.{i:05d}.json" for i in range(OLD_ARCHIVED + RECENT)]
    registered += [failed, pending, replaced]
    assert len(registered) > 10_000
    instance.add_dynamic_partitions(ACCOUNTS.partitions, registered)
    config = make_config(s3_server, bucket, warehouse)
    defs = build_definitions(config)

    removed: list[str] = []
    cursor = None
    for _ in range(OLD_ARCHIVED // MAX_REMOVED_PER_TICK + 2):  # the removals take turns
        result = evaluate_sensor(defs, instance, cursor=cursor)
        batch = removals(result)
        assert len(batch) <= MAX_REMOVED_PER_TICK
        if not batch:
            break
        assert isinstance(result, SensorResult) and result.skip_reason is not None
        said = result.skip_reason.skip_message or ""
        assert f"removed the partitions of {len(batch):,} files" in said
        for removed_key in batch:  # as the daemon applies the request
            instance.delete_dynamic_partition(ACCOUNTS.partitions, removed_key)
        removed += batch
        cursor = result.cursor
    expected = {key for key in registered[:OLD_ARCHIVED] if key != resent} | {replaced}
    assert len(removed) == len(set(removed)) and set(removed) == expected
    left = set(instance.get_dynamic_partitions(ACCOUNTS.partitions))
    assert left == set(registered) - expected

    # The ledger still shows every file.
    status = read_source_status(s3, config.sources[0], config.warehouse, 1.0)
    archived = {s.key for s in status.states if s.state == "archived"}
    assert archived >= expected | {resent}
