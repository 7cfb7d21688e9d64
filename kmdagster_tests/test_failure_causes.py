"""What the product says is true when something breaks or is under way: a failure is
reported by its cause (the first error, never one raised while cleaning up after it, nor
Dagster's step wrapper alone), and a file mid-archive by its own state."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from kmdagster.config import WarehouseSettings
from kmdagster.defs.run_history import RunProgress, failure_message, is_quarantined
from kmdagster.defs.runs import WAREHOUSE_FAULT_TAG, import_run_tags
from kmdagster.s3.archive import archive_file
from kmdagster.s3.objects import S3File, list_root_files
from kmdagster.status import file_states
from kmdagster.warehouse.backends import one_writer, open_warehouse
from kmdagster.warehouse.database import disk_full_message, rollback_after
from kmdagster.warehouse.warehouse import DuckDBWarehouse, Warehouse
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3, free_ports
from kmdagster_tests.helpers import ACCOUNTS, make_config, run_import
from kmdagster_tests.ticks import run_partition

KEY = "accounts.1.json"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB filesystem of its own (tmpfs), for a warehouse whose disk fills."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def test_a_warehouse_disk_that_fills_fails_the_run_saying_so_not_with_the_rollback(
    s3_server: SeaweedS3, s3: Any, bucket: str, small_disk: Path, instance: DagsterInstance
) -> None:
    # 39 MB of lines in 1 MB chunks: the DuckDB file and its WAL fill 6 MB midway.
    s3.put_object(Bucket=bucket, Key=KEY, Body=km_file(seed=1, repeats=80_000).data)
    warehouse = WarehouseSettings(duckdb_path=str(small_disk / "warehouse.duckdb"))
    config = make_config(s3_server, bucket, warehouse, chunk_bytes=1024 * 1024)
    instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])

    result = run_partition(config, instance, KEY)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error  # type: ignore[union-attr]
    chain = []
    while error is not None:
        chain.append(error.message)
        error = error.cause or error.context
    assert any("No space left on device" in message for message in chain), chain
    assert not any("cannot rollback" in message for message in chain), chain
    # What the run says first, and what status and the quarantine rule read of it: the
    # cause in words, the key, and what to do.
    message = failure_message(instance, result.run_id)
    assert message.startswith(f"s3://{bucket}/{KEY}: the warehouse's disk is full ("), message
    assert "No space left on device" in message and "free space on that disk" in message


def test_runs_a_full_disk_fails_do_not_quarantine_the_file(
    s3_server: SeaweedS3, s3: Any, bucket: str, small_disk: Path, instance: DagsterInstance
) -> None:
    s3.put_object(Bucket=bucket, Key=KEY, Body=km_file(seed=1, repeats=2_000).data)  # 1 MB
    warehouse = WarehouseSettings(duckdb_path=str(small_disk / "warehouse.duckdb"))
    config = make_config(s3_server, bucket, warehouse, chunk_bytes=1024 * 1024)
    source = config.sources[0]
    instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])
    with open_warehouse(warehouse):
        pass  # the warehouse and its tables exist; then the disk fills but for 64 KB
    filler = small_disk / "filler"
    with filler.open("wb") as out, suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    filler.write_bytes(filler.read_bytes()[:-65536])
    tags = import_run_tags(source, one_writer(warehouse))

    # More runs than the quarantine threshold, each failing before any chunk commits.
    for _ in range(source.quarantine_after_failed_runs + 1):
        result = run_partition(config, instance, KEY, tags)
        assert not result.success
        assert "the warehouse's disk is full" in failure_message(instance, result.run_id)
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.tags[WAREHOUSE_FAULT_TAG] == "true"
    progress = RunProgress.read_only(warehouse, source, list_root_files(s3, source))
    assert not is_quarantined(instance, source, KEY, progress)

    filler.unlink()  # room again: the file imports, first in line as it was
    assert run_partition(config, instance, KEY, tags).success


def test_a_rollback_that_fails_after_an_error_is_logged_and_the_error_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with DuckDBWarehouse.connect(tmp_path / "w.duckdb") as warehouse:
        database = warehouse.database  # no transaction open: DuckDB refuses the rollback
        rollback_after(database, OSError("the first error"))
    assert "rollback after OSError failed too" in caplog.text
    assert "no transaction is active" in caplog.text


def test_only_a_full_disk_is_put_in_those_words() -> None:
    assert disk_full_message(ValueError("Conversion Error")) is None
    words = disk_full_message(OSError('Could not write "x.wal": No space left on device'))
    assert words is not None and words.startswith("the warehouse's disk is full (Could not")


def test_a_file_archived_for_the_first_time_is_never_shown_as_sent_again(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str
) -> None:
    """States read at each step of the archive (between the ledger's record of the archive
    key and the original's delete, then after it), and after the same content is sent
    again."""
    file = km_file(seed=4, repeats=2)
    s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
    settings = WarehouseSettings(duckdb_path=str(tmp_path / "warehouse.duckdb"))
    source = make_config(s3_server, bucket, settings).sources[0]
    seen: list[tuple[str, bool]] = []

    def status_now(warehouse: Warehouse) -> None:
        ledger = warehouse.ledger_rows("accounts")
        states = file_states(list_root_files(s3, source), ledger)
        seen.extend((str(state.state), state.at_bucket_root) for state in states)

    # Imported in a later second than it was written, as files are (S3 keeps whole seconds).
    written = s3.head_object(Bucket=bucket, Key=KEY)["LastModified"]
    wait_past(written)
    with open_warehouse(settings) as warehouse:
        report = run_import(s3, warehouse, bucket, KEY, 1024 * 1024)
        row = report.ledger
        assert row.completed_at is not None

        def record(archived_key: str) -> None:
            warehouse.mark_archived(row, archived_key)
            status_now(warehouse)  # recorded, the original not yet deleted

        imported = S3File(KEY, row.file_etag, row.size_bytes)
        archive_file(s3, bucket, imported, row.completed_at, record)
        status_now(warehouse)
        assert seen == [("archived", True), ("archived", False)]

        wait_past(row.completed_at)  # the same bytes sent again, later
        s3.put_object(Bucket=bucket, Key=KEY, Body=file.data)
        seen.clear()
        status_now(warehouse)
    assert seen == [("reimported_identical", True)]


def wait_past(moment: datetime) -> None:
    """Until the clock's whole second is past ``moment``'s."""
    while datetime.now(timezone.utc).replace(microsecond=0) <= moment:
        time.sleep(0.05)


def test_a_warehouse_database_that_refuses_the_connection_is_named_with_what_to_do(
    s3_server: SeaweedS3, s3: Any, bucket: str, instance: DagsterInstance
) -> None:
    s3.put_object(Bucket=bucket, Key=KEY, Body=km_file(seed=1).data)
    (port,) = free_ports(1)  # nothing listens there
    warehouse = WarehouseSettings(
        backend="postgres", postgres_url=f"postgresql://km@127.0.0.1:{port}/warehouse"
    )
    instance.add_dynamic_partitions(ACCOUNTS.partitions, [KEY])

    result = run_partition(make_config(s3_server, bucket, warehouse), instance, KEY)

    assert not result.success
    message = failure_message(instance, result.run_id)
    assert message.startswith("cannot connect to the PostgreSQL warehouse "), message
    assert f"127.0.0.1:{port}" in message and "Connection refused" in message, message
    assert "check that the database runs and that this host may reach it" in message
