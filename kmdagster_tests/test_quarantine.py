"""A file that fails every run is set aside after a few, the next file goes first, and an
operator lifts it: tested with a key the importing identity may not read and with a file
that changes at every run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import DagsterInstance, RunRequest, SkipReason

from kmdagster.cli import main
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.run_history import (
    RunProgress,
    quarantine_evaluation,
    quarantine_for_key,
    quarantined_files,
)
from kmdagster.defs.runs import RETRY_TAG
from kmdagster.quarantine import FinishedRun, failure_streak, quarantine_of
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import Identity, SeaweedS3
from kmdagster_tests.helpers import (
    ACCOUNTS,
    ADMIN,
    QUARANTINE_BUCKET,
    SCOPED,
    make_config,
    write_config,
)
from kmdagster_tests.ticks import run_tick

FIRST, SECOND = "accounts.1.json", "accounts.2.json"
TICK = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)


def as_the_cli_runs(config: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """A Dagster instance and ``config``'s file where the CLI (``main``) finds them."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("KMDAGSTER_CONFIG", str(write_config(tmp_path / "km.yaml", config)))


def runs(*outcomes: str) -> list[FinishedRun]:
    """Newest first: 'f' failed, 's' succeeded, 'r' failed after a retry-tagged launch,
    'a' failed after advancing the file (committed chunks, then was killed), 'w' failed
    by the warehouse (its disk full, its database unreachable)."""
    return [
        FinishedRun(
            f"run{i}",
            o == "s",
            o == "r",
            created=100.0 - i,
            advanced=o == "a",
            warehouse_fault=o == "w",
        )
        for i, o in enumerate(outcomes)
    ]


@pytest.mark.parametrize(
    ("outcomes", "lifted_at", "streak"),
    [
        ("fffs", None, 3),
        ("ffsf", None, 2),  # a success ends the streak
        ("frff", None, 2),  # a retry-tagged launch is a new start; it counts if it failed
        ("ffff", 98.5, 2),  # lifted at 98.5: only the runs created after it count
        ("aaaaaaa", None, 0),  # killed seven times, each after committing: never poison
        ("ffaf", None, 2),  # a run that advanced proved the file importable then
        ("wwwwww", None, 0),  # the warehouse's faults say nothing of the file
        ("fwfwfs", None, 3),  # ... and neither count nor end a streak
        ("", None, 0),
    ],
)
def test_failure_streak(outcomes: str, lifted_at: float | None, streak: int) -> None:
    assert len(failure_streak(runs(*outcomes), lifted_at)) == streak


def test_quarantine_needs_the_threshold_of_failures() -> None:
    assert quarantine_of("k", runs("f", "f", "s"), None, 3) is None
    assert quarantine_of("k", runs("f", "f", "a", "f"), None, 3) is None
    found = quarantine_of("k", runs("f", "f", "f"), None, 3)
    assert found is not None and (found.failed_runs, found.last_run_id) == (3, "run0")


@pytest.fixture
def scoped_bucket(s3: Any, monkeypatch: Any) -> Iterator[str]:
    """The bucket where the product's identity may not read accounts.1.json."""
    s3.create_bucket(Bucket=QUARANTINE_BUCKET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SCOPED.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SCOPED.secret_key)
    yield QUARANTINE_BUCKET
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=QUARANTINE_BUCKET):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=QUARANTINE_BUCKET, Key=item["Key"])
    s3.delete_bucket(Bucket=QUARANTINE_BUCKET)


def test_an_unreadable_file_is_quarantined_the_next_goes_first_and_retry_resumes_it(
    s3_server: SeaweedS3,
    s3: Any,
    scoped_bucket: str,
    tmp_path: Path,
    monkeypatch: Any,
    capsys: Any,
) -> None:
    first, second = km_file(seed=31, repeats=5), km_file(seed=32, repeats=1)
    s3.put_object(Bucket=scoped_bucket, Key=FIRST, Body=first.data)
    s3.put_object(Bucket=scoped_bucket, Key=SECOND, Body=second.data)
    warehouse_path = tmp_path / "warehouse.duckdb"
    # One 1 KB chunk per run, so the first file is part imported when it starts failing.
    config = make_config(
        s3_server, scoped_bucket, warehouse_path, chunk_bytes=1024, time_budget_seconds=0.001
    )
    source = config.sources[0]
    defs = build_definitions(config)
    as_the_cli_runs(config, tmp_path, monkeypatch)

    def as_identity(identity: Identity) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", identity.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", identity.secret_key)

    def tick(instance: DagsterInstance, hour: int) -> RunRequest | SkipReason:
        return run_tick(defs, instance, TICK + timedelta(hours=hour), must_succeed=False)

    with DagsterInstance.get() as instance:
        as_identity(ADMIN)  # the first run commits a chunk of the first file
        assert getattr(tick(instance, 0), "partition_key", None) == FIRST
        [committed] = ledger(warehouse_path, FIRST)
        assert 0 < committed[2] < len(first.data)
        as_identity(SCOPED)  # then the file may no longer be read
        requested = [tick(instance, h) for h in range(1, 5)]
        assert [getattr(r, "partition_key", None) for r in requested] == [
            FIRST,
            FIRST,
            FIRST,
            SECOND,  # after three failed runs the first file is set aside
        ]
        progress = RunProgress.at_root_now(s3, source, config.warehouse)
        quarantine = quarantine_for_key(instance, source, FIRST, progress)
        assert quarantine is not None and quarantine.failed_runs == 3
        assert f"s3://{scoped_bucket}/{FIRST}" in quarantine.last_error
        check = quarantine_evaluation(source, quarantined_files(instance, source, progress))
        assert not check.passed and check.metadata["quarantined_files"].value == 1
        nothing_left = tick(instance, 5)
        assert isinstance(nothing_left, SkipReason)
        assert "quarantined" in (nothing_left.skip_message or "")

    assert ledger(warehouse_path, FIRST) == [committed]  # nothing lost, offset kept
    assert main(["status", "accounts", "--json"]) == 0
    status = {f["key"]: f for f in json_out(capsys)["files"]}
    assert status[FIRST]["state"] == "quarantined" and status[FIRST]["at_bucket_root"]
    assert status[FIRST]["next_offset"] == committed[2]
    assert status[FIRST]["error"] == quarantine.last_error
    assert status[SECOND]["state"] == "archived"

    # The operator fixes the permission (here: imports as the admin) and lifts it.
    assert main(["retry", "accounts", FIRST]) == 0
    assert "first in line again" in capsys.readouterr().out
    assert main(["retry", "accounts", SECOND]) == 1  # not quarantined: nothing to lift
    as_identity(ADMIN)
    with DagsterInstance.get() as instance:
        progress = RunProgress.at_root_now(s3, source, config.warehouse)
        assert quarantine_for_key(instance, source, FIRST, progress) is None
        hour = 6
        while ledger(warehouse_path, FIRST)[0][1] != "archived":
            retried = tick(instance, hour)
            assert getattr(retried, "partition_key", None) == FIRST, retried
            hour += 1
        assert quarantined_files(instance, source, progress) == {}
    assert ledger(warehouse_path, FIRST) == [(FIRST, "archived", len(first.data), first.lines)]
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        (duplicates,) = con.execute(
            "SELECT count(*) - count(DISTINCT (file_id, line_no)) FROM km_event_rows"
        ).fetchone()  # type: ignore[misc]
    assert duplicates == 0


def ledger(warehouse_path: Path, key: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        return con.execute(
            "SELECT file_key, status, next_offset, lines_read FROM km_import_files "
            "WHERE file_key = ?",
            [key],
        ).fetchall()


def json_out(capsys: Any) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out)


def test_a_file_that_changes_at_every_run_is_quarantined(
    s3_server: SeaweedS3, s3: Any, bucket: str, tmp_path: Path, monkeypatch: Any
) -> None:
    versions = [km_file(seed=40 + i, repeats=30).data for i in range(2)]
    s3.put_object(Bucket=bucket, Key=FIRST, Body=versions[0])
    s3.put_object(Bucket=bucket, Key=SECOND, Body=km_file(seed=33, repeats=5).data)
    warehouse_path = tmp_path / "warehouse.duckdb"
    config = make_config(s3_server, bucket, warehouse_path, quarantine_after_failed_runs=2)
    defs = build_definitions(config)
    stop = threading.Event()

    def keep_changing() -> None:  # a producer that rewrites the file all the time
        n = 0
        while not stop.is_set():
            n += 1
            # Every body new: a version that came back would be one a failed run had
            # advanced, which rightly ends the streak.
            rewrite = b'{"_p":"producer","_n":"rewritten","_t":%d}\n' % (1_700_000_000 + n)
            s3.put_object(Bucket=bucket, Key=FIRST, Body=versions[n % 2] + rewrite)

    writer = threading.Thread(target=keep_changing, daemon=True)
    home = tmp_path / "dagster_home"
    home.mkdir()
    writer.start()
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            keys = []
            for h in range(3):
                outcome = run_tick(defs, instance, TICK + timedelta(hours=h), must_succeed=False)
                assert isinstance(outcome, RunRequest)
                keys.append(outcome.partition_key)
            progress = RunProgress.at_root_now(s3, config.sources[0], config.warehouse)
            found = quarantine_for_key(instance, config.sources[0], FIRST, progress)
    finally:
        stop.set()
        writer.join()

    assert keys == [FIRST, FIRST, SECOND]
    assert found is not None and found.failed_runs == 2
    assert "changed" in found.last_error or "no longer holds" in found.last_error


def test_a_launch_tagged_retry_gives_the_file_a_new_start(
    s3_server: SeaweedS3, s3: Any, bucket: str, warehouse_path: Path, tmp_path: Path
) -> None:
    config = make_config(s3_server, bucket, warehouse_path, quarantine_after_failed_runs=2)
    source = config.sources[0]
    job = build_definitions(config).resolve_job_def(ACCOUNTS.job)
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(ACCOUNTS.partitions, [FIRST])
        for _ in range(2):  # the key does not exist: every run fails
            assert not job.execute_in_process(
                instance=instance, partition_key=FIRST, raise_on_error=False
            ).success
        progress = RunProgress.at_root_now(s3, source, config.warehouse)
        assert quarantine_for_key(instance, source, FIRST, progress) is not None
        assert not job.execute_in_process(
            instance=instance, partition_key=FIRST, raise_on_error=False, tags={RETRY_TAG: "true"}
        ).success
        # one failure since the retry
        assert quarantine_for_key(instance, source, FIRST, progress) is None


def test_a_file_no_retry_can_read_is_set_aside_at_once_and_shown_apart(
    s3_server: SeaweedS3, s3: Any, bucket: str, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """A ``.json.gz`` that is not gzip fails its first run, which quarantines it at once;
    status lists it apart from the backlog with its whole error, and the preview passes
    over it to the first file the schedule will import."""
    bad, good = "accounts.1.json.gz", "accounts.2.json"
    s3.put_object(Bucket=bucket, Key=bad, Body=km_file(seed=1).data)  # plain text, .gz name
    s3.put_object(Bucket=bucket, Key=good, Body=km_file(seed=2, repeats=3).data)
    s3.put_object(Bucket=bucket, Key="accounts.3.json", Body=km_file(seed=3, repeats=3).data)
    config = make_config(s3_server, bucket, tmp_path / "warehouse.duckdb")
    source = config.sources[0]
    defs = build_definitions(config)
    as_the_cli_runs(config, tmp_path, monkeypatch)
    with DagsterInstance.get() as instance:
        first = run_tick(defs, instance, TICK, must_succeed=False)
        assert getattr(first, "partition_key", None) == bad
        progress = RunProgress.at_root_now(s3, source, config.warehouse)
        quarantine = quarantine_for_key(instance, source, bad, progress)
        assert quarantine is not None and quarantine.unreadable
        assert quarantine.failed_runs == 1
        assert "not a valid gzip stream" in quarantine.last_error
        assert "quarantined at once" in quarantine.last_error

    capsys.readouterr()
    assert main(["status", "accounts"]) == 0
    said = capsys.readouterr().out
    rows = [line for line in said.splitlines() if line.startswith("|")]
    assert [row.split("|")[1].strip() for row in rows[2:]] == ["1", "2", "set aside"]
    assert [row.split("|")[2].strip() for row in rows[2:]] == [good, "accounts.3.json", bad]
    assert "Backlog: 2 files;" in said
    lift = "not imported until `kmdagster retry accounts KEY` lifts it"
    assert f"Set aside: 1 file quarantined, {lift} ({bad})" in said
    assert f"- {bad}: {quarantine.last_error}" in said  # whole, not cut

    assert main(["preview", "accounts"]) == 0
    said = capsys.readouterr().out
    assert f"## Preview of s3://{bucket}/{good}" in said
    assert f"passed over 1 quarantined file ({bad})" in said

    with DagsterInstance.get() as instance:
        second = run_tick(defs, instance, TICK + timedelta(hours=1))
        assert getattr(second, "partition_key", None) == good
        run_tick(defs, instance, TICK + timedelta(hours=2))
        nothing_left = run_tick(defs, instance, TICK + timedelta(hours=3))
    assert isinstance(nothing_left, SkipReason)
    assert nothing_left.skip_message == (
        f"nothing to import: 1 pending file of s3://{bucket} is quarantined ({bad}); "
        "lift one with `kmdagster retry accounts KEY`"
    )
    assert main(["status", "accounts"]) == 0
    said = capsys.readouterr().out
    assert "Backlog: 0 files; nothing else is waiting." in said
