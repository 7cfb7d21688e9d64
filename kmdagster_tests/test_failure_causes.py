"""A failure is reported by its cause: the first error, never one raised while cleaning up
after it, nor Dagster's step wrapper alone."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from kmdagster.config import WarehouseSettings
from kmdagster.defs.run_history import failure_message
from kmdagster.warehouse.database import disk_full_message, rollback_after
from kmdagster.warehouse.warehouse import DuckDBWarehouse
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import ACCOUNTS, make_config
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
