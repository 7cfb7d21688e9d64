"""The production shape on one machine: Dagster's instance in PostgreSQL (deploy/dagster.yaml
as shipped), the real `dagster-daemon run` and a code server as separate processes, and
a PostgreSQL warehouse. Two sources; the sensor registers their files and the schedule
(cron every minute, sensor every 5 s: set in kmdagster.yaml only) imports them; their
runs carry the postgres warehouse tag, which the run queue does not hold back.
Mid-import, the machine running an import is lost: its code server and run worker get
SIGKILL. Run monitoring fails the dead run once it is past its budget plus
run_grace_seconds, and a later tick resumes the file with every line loaded once.
On the lake, the orders run is held after its first commit (a hold point) until the
accounts run that resumes has started: their run records show the two sources' runs
overlapping, which is what the lake is for. Orders' waiting files are then imported by
`kmdagster backfill orders`, which the daemon runs beside the schedule, never at once
with an import the schedule launched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from dagster._core.storage.tags import BACKFILL_ID_TAG

from kmdagster.config import KmConfig, S3Settings, SourceConfig, WarehouseSettings
from kmdagster.defs.runs import ACTIVE_RUN_STATUSES, ONE_WRITER_TAG, SOURCE_TAG
from kmdagster.faults import HOLD_ENV
from kmdagster.s3.objects import ARCHIVE_PREFIX
from kmdagster_dev.instance_yaml import deploy_instance_settings, write_instance_yaml
from kmdagster_dev.km_files import km_file
from kmdagster_dev.postgres import USER, PostgresServer
from kmdagster_dev.processes import stop_process_group
from kmdagster_dev.seaweed import SeaweedS3, free_ports
from kmdagster_tests.helpers import assert_file_loaded_once, warehouse_rows, write_config

pytestmark = pytest.mark.e2e  # the real daemon and code server on PostgreSQL

BIN = Path(sys.executable).parent
T = TypeVar("T")
# accounts: a large file, its run killed mid-import; orders: a file imported meanwhile.
BIG_KEY = "accounts.20261130.json"
ORDER_KEY = "orders.1.json"
ORDER_BACKLOG = [f"orders.2.{i}.json" for i in range(6)]  # imported by a backfill
FINISH_SECONDS = 420
RELEASE = "release-orders"  # created once an orders run and an accounts run both run
# run_grace_seconds by source, held or not. Unheld, the killed run (started a few seconds
# after its minute) is failed at its budget plus grace plus a monitoring poll: with 20 s
# that is before the next minute's tick, which resumes the file, where 30 s missed it by
# seconds and cost the test a minute. A slow live run failed by the limit would only be
# resumed a minute later. When orders is held until accounts resumes, accounts' killed run
# is failed only after orders' first run has surely begun (whatever the code server's
# restart took), and the held run outlives no limit.
GRACE = {False: {"accounts": 20, "orders": 20}, True: {"accounts": 75, "orders": 600}}


def wait_for(what: str, found: Callable[[], T | None], timeout: float, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def run_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The run worker's process id, from the engine event its code server logs."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        if "Started process for run" in (entry.message or ""):
            data = entry.dagster_event.engine_event_data  # type: ignore[union-attr]
            return int(data.metadata["pid"].value)  # type: ignore[arg-type]
    return None


def ledger(warehouse: WarehouseSettings) -> dict[str, tuple[Any, ...]]:
    try:
        rows = warehouse_rows(
            warehouse, "SELECT file_key, status, next_offset, import_runs FROM km_import_files"
        )
    except AssertionError:  # no tables before the first run
        return {}
    return {row[0]: tuple(row[1:]) for row in rows}


@pytest.fixture(params=["postgres", "ducklake"])
def deployment(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3: Any,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[KmConfig, dict[str, str]]]:
    """kmdagster.yaml, DAGSTER_HOME and the environment of the deployment's processes: the
    warehouse on PostgreSQL, or a lake with a PostgreSQL catalog and its files on S3."""
    suffix = tmp_path.name.replace("-", "_").lower()[-20:]
    dagster_db = f"dagster_{suffix}"
    postgres_server.create_database(dagster_db)
    warehouse_url = postgres_server.create_database(f"km_{suffix}")
    on_lake = request.param == "ducklake"
    buckets = {
        name: f"km-deploy-{name}-{suffix.replace('_', '-')}" for name in ("accounts", "orders")
    }
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    sources = tuple(
        SourceConfig(
            name=name,
            bucket=bucket,
            base_filename=f"{name}.json",
            cron="* * * * *",
            sensor_interval_seconds=5,
            chunk_bytes=1024 * 1024,
            time_budget_seconds=20,
            run_grace_seconds=GRACE[on_lake][name],
        )
        for name, bucket in buckets.items()
    )
    if not on_lake:
        warehouse = WarehouseSettings(backend="postgres", postgres_url=warehouse_url)
    else:
        s3.create_bucket(Bucket=f"km-lake-{suffix.replace('_', '-')}")
        warehouse = WarehouseSettings(
            backend="ducklake",
            ducklake_catalog=warehouse_url,
            ducklake_data_path=f"s3://km-lake-{suffix.replace('_', '-')}/lake/",
        )
    config = KmConfig(
        s3=S3Settings(endpoint_url=s3_server.endpoint_url, region_name="us-east-1"),
        warehouse=warehouse,
        sources=sources,
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_instance_yaml(home, postgres_storage=True, monitoring_poll_seconds=5)
    instance_storage = {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres_server.port),
        "DAGSTER_PG_DB": dagster_db,
        "DAGSTER_PG_USERNAME": USER,
        "DAGSTER_PG_PASSWORD": postgres_server.password,
    }
    for name, value in instance_storage.items():  # for this test's own instance too
        monkeypatch.setenv(name, value)
    env = {
        **os.environ,
        "KMDAGSTER_CONFIG": str(write_config(tmp_path / "kmdagster.yaml", config)),
        "DAGSTER_HOME": str(home),
    }
    if on_lake:
        env[HOLD_ENV] = f"import.chunk_committed:orders:{tmp_path / RELEASE}"
    yield config, env


def test_daemon_on_postgres_imports_two_sources_and_recovers_a_killed_run(
    tmp_path: Path, s3: Any, deployment: tuple[KmConfig, dict[str, str]]
) -> None:
    config, env = deployment
    accounts, orders = config.sources
    warehouse = config.warehouse
    big = km_file(seed=1, repeats=80_000)  # 39 MB, 640,000 lines: about 38 chunks
    order_file = km_file(seed=2, repeats=500)
    backlog_file = km_file(seed=3, repeats=2)
    s3.put_object(Bucket=accounts.bucket, Key=BIG_KEY, Body=big.data)
    s3.put_object(Bucket=orders.bucket, Key=ORDER_KEY, Body=order_file.data)
    for key in ORDER_BACKLOG:
        s3.put_object(Bucket=orders.bucket, Key=key, Body=backlog_file.data)

    (port,) = free_ports(1)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n"
        "      location_name: kmdagster\n"
    )
    code_server = start_code_server(port, env, tmp_path / "code-server.log")
    daemon = None
    try:
        daemon = start(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            env,
            tmp_path / "daemon.log",
        )
        confirm(accounts, workspace, env)

        with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            # Once the accounts run has committed a chunk and has more to go, the machine
            # is lost: SIGKILL to the code server and the run worker it started. (Orders
            # is switched on afterwards: a run of it in flight would die with the machine.)
            wait_for(
                f"{BIG_KEY} part-imported",
                lambda: ledger(warehouse).get(BIG_KEY, ("pending",))[0] == "in_progress",
                timeout=150,
                every=0.05,
            )
            [killed] = instance.get_runs(
                RunsFilter(tags={SOURCE_TAG: "accounts"}, statuses=[DagsterRunStatus.STARTED])
            )
            worker = wait_for("the run worker's pid", lambda: run_pid(instance, killed.run_id), 10)
            os.killpg(code_server.pid, signal.SIGKILL)
            code_server.wait(timeout=30)
            wait_for("the run worker gone", lambda: not Path(f"/proc/{worker}").exists(), 10)
            killed_at = ledger(warehouse)[BIG_KEY]
            assert killed_at[1] < len(big.data), "the file finished before the kill"
            code_server = start_code_server(port, env, tmp_path / "code-server-2.log")
            # The second source starts while the first resumes: neither waits for the other.
            confirm(orders, workspace, env)
            wait_for(
                "orders' files registered",
                lambda: len(instance.get_dynamic_partitions("orders_files")) == 7,
                timeout=60,
            )
            backfill_orders(env)
            if HOLD_ENV in env:  # both sources' runs at once, then orders is released
                wait_for_runs_side_by_side(instance, killed.run_id)
                (tmp_path / RELEASE).touch()

            wait_for(
                "every file archived",
                lambda: all(
                    ledger(warehouse).get(key, ("",))[0] == "archived"
                    for key in (BIG_KEY, ORDER_KEY, *ORDER_BACKLOG)
                ),
                timeout=FINISH_SECONDS,
                every=1.0,
            )
            dead = instance.get_run_by_id(killed.run_id)
            assert dead is not None and dead.status == DagsterRunStatus.FAILURE
            messages = [entry.message for entry in instance.all_logs(killed.run_id)]
            assert any("exceeding maximum runtime" in (m or "") for m in messages), (
                "run monitoring did not fail the dead run"
            )

            # The archive is the run's last step; the run reports success just after it.
            def accounts_runs_once_one_succeeded() -> list[Any] | None:
                runs = instance.get_run_records(RunsFilter(tags={SOURCE_TAG: "accounts"}))
                succeeded = any(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
                return list(runs) if succeeded else None

            records = wait_for(
                "an accounts run successful", accounts_runs_once_one_succeeded, timeout=60
            )
            order_runs = wait_for(
                "every orders run ended",
                lambda: (
                    None
                    if instance.get_runs(
                        RunsFilter(tags={SOURCE_TAG: "orders"}, statuses=ACTIVE_RUN_STATUSES)
                    )
                    else instance.get_run_records(RunsFilter(tags={SOURCE_TAG: "orders"}))
                ),
                timeout=120,
            )
    finally:
        if daemon is not None:
            stop_process_group(daemon)
        stop_process_group(code_server)

    # Nothing holds one source's runs behind the other's: no run carries the one-writer
    # tag, the only warehouse limit of the shipped run queue.
    assert not [r for r in [*records, *order_runs] if ONE_WRITER_TAG in r.dagster_run.tags]
    limits = deploy_instance_settings()["run_queue"]["tag_concurrency_limits"]
    assert [limit["value"] for limit in limits if limit["key"] == ONE_WRITER_TAG] == ["true"]
    # Their run records show an accounts run and an orders run in progress at once.
    resumed = [r for r in records if r.dagster_run.status == DagsterRunStatus.SUCCESS]
    assert HOLD_ENV not in env or any(
        a.start_time < o.end_time and o.start_time < a.end_time  # type: ignore[operator]
        for a in resumed
        for o in order_runs
    ), [(r.dagster_run.tags[SOURCE_TAG], r.start_time, r.end_time) for r in [*records, *order_runs]]
    assert ledger(warehouse)[BIG_KEY][2] >= 2  # the killed run and the one that resumed
    assert_file_loaded_once(warehouse, BIG_KEY, big)
    assert_file_loaded_once(warehouse, ORDER_KEY, order_file)
    for key in ORDER_BACKLOG:
        assert_file_loaded_once(warehouse, key, backlog_file)
    # The backfill's runs took orders' waiting files; no two orders runs overlapped.
    backfilled = [r for r in order_runs if BACKFILL_ID_TAG in r.dagster_run.tags]
    assert any(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in backfilled), [
        (r.dagster_run.tags, r.dagster_run.status) for r in order_runs
    ]
    spans = sorted((r.start_time, r.end_time) for r in order_runs if r.start_time)
    overlaps = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]  # type: ignore[operator]
    assert overlaps == [], spans
    for source, key in ((accounts, BIG_KEY), (orders, ORDER_KEY)):
        listed = [item["Key"] for item in s3.list_objects_v2(Bucket=source.bucket)["Contents"]]
        assert [k for k in listed if not k.startswith(ARCHIVE_PREFIX)] == []
        assert any(k.endswith(f"/{key}") for k in listed)


def wait_for_runs_side_by_side(instance: DagsterInstance, killed_run_id: str) -> None:
    """Until an orders run (held) and an accounts run other than the killed one both run."""

    def in_progress(source: str) -> list[str]:
        started = RunsFilter(tags={SOURCE_TAG: source}, statuses=[DagsterRunStatus.STARTED])
        return [r.run_id for r in instance.get_runs(started) if r.run_id != killed_run_id]

    wait_for("an orders run", lambda: in_progress("orders"), timeout=300)
    wait_for(
        "an accounts run beside the orders run",
        lambda: in_progress("accounts") and in_progress("orders"),
        timeout=300,
        every=0.1,
    )


def backfill_orders(env: dict[str, str]) -> None:
    """`kmdagster backfill orders`: a Dagster backfill of orders' waiting files."""
    done = subprocess.run(
        [str(BIN / "kmdagster"), "backfill", "orders"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("backfill "), done.stdout + done.stderr


def confirm(source: SourceConfig, workspace: Path, env: dict[str, str]) -> None:
    """`kmdagster confirm`: the source's sensor and schedule switched on."""
    done = subprocess.run(
        [str(BIN / "kmdagster"), "confirm", source.name, "--workspace", str(workspace)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def start_code_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`dagster code-server start` for kmdagster.definitions, once it answers."""
    server = start(
        [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(port),
         "-m", "kmdagster.definitions"],
        env,
        log,
    )  # fmt: skip
    health = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)]
    wait_for(
        "the code server",
        lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0,
        timeout=120,
        every=1.0,
    )
    return server
