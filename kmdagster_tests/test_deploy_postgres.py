"""The production shape on one machine: Dagster's instance in PostgreSQL (deploy/dagster.yaml
as shipped), the real `dagster-daemon run` and two code servers as separate processes,
one code location with a PostgreSQL warehouse and one with a lake (a PostgreSQL catalog,
its files on S3), each with two sources, all under the one daemon. The sensors register
their files and the schedules (cron every minute, sensors every 5 s: set in kmdagster.yaml
only) import them; no run carries the one-writer tag, so the run queue holds no source
back for another. Mid-import, each location's machine is lost: its code server and run
worker get SIGKILL. Run monitoring fails the dead run once it is past its budget plus
run_grace_seconds, and a later tick resumes the file with every line loaded once.
On the lake, the orders run is held after its first commit (a hold point) until the
accounts run that resumes has started: their run records show the two sources' runs
overlapping, which is what the lake is for. Orders' waiting files are then imported by
`kmdagster backfill`, which the daemon runs beside the schedule, never at once with an
import the schedule launched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
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

pytestmark = pytest.mark.e2e  # the real daemon and code servers on PostgreSQL

BIN = Path(sys.executable).parent
T = TypeVar("T")
DAY = "20261130"  # accounts: a large file of this day, its run killed mid-import
BACKLOG = 6  # orders: one file imported by the schedule, these by a backfill
FINISH_SECONDS = 480
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


@dataclass
class Deployment:
    """One code location of the deployment: its warehouse, its two sources (accounts and
    orders, named with the location's prefix), its code server and its environment."""

    location: str
    config: KmConfig
    env: dict[str, str]
    port: int
    workspace: Path  # this location alone, for the CLI
    server: subprocess.Popen[bytes] | None = None
    killed_run: str = ""

    @property
    def accounts(self) -> SourceConfig:
        return self.config.sources[0]

    @property
    def orders(self) -> SourceConfig:
        return self.config.sources[1]

    @property
    def held(self) -> bool:
        return HOLD_ENV in self.env

    @property
    def big_key(self) -> str:
        return f"{self.accounts.name}.{DAY}.json"

    @property
    def order_keys(self) -> list[str]:
        stem = self.orders.name
        return [f"{stem}.1.json", *(f"{stem}.2.{i}.json" for i in range(BACKLOG))]

    def start_server(self, log: Path) -> None:
        self.server = start_code_server(self.port, self.env, log)


def make_deployment(
    location: str,
    prefix: str,
    warehouse: WarehouseSettings,
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3: Any,
    base_env: dict[str, str],
) -> Deployment:
    """kmdagster.yaml for ``warehouse``, with sources ``{prefix}accounts`` and
    ``{prefix}orders`` in buckets of their own; on the lake, orders' imports are held after
    their first commit until the test releases them."""
    held = warehouse.backend == "ducklake"
    suffix = tmp_path.name.replace("_", "-").lower()[-20:]
    sources = []
    for name in ("accounts", "orders"):
        bucket = f"km-{prefix or 'pg-'}{name}-{suffix}".replace("_", "-")
        s3.create_bucket(Bucket=bucket)
        sources.append(
            SourceConfig(
                name=f"{prefix}{name}",
                bucket=bucket,
                base_filename=f"{prefix}{name}.json",
                cron="* * * * *",
                sensor_interval_seconds=5,
                chunk_bytes=1024 * 1024,
                time_budget_seconds=20,
                run_grace_seconds=GRACE[held][name],
            )
        )
    config = KmConfig(
        s3=S3Settings(endpoint_url=s3_server.endpoint_url, region_name="us-east-1"),
        warehouse=warehouse,
        sources=tuple(sources),
    )
    env = {
        **base_env,
        "KMDAGSTER_CONFIG": str(write_config(tmp_path / f"{location}.yaml", config)),
    }
    if held:
        env[HOLD_ENV] = f"import.chunk_committed:{sources[1].name}:{tmp_path / RELEASE}"
    (port,) = free_ports(1)
    workspace = tmp_path / f"{location}-workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [grpc_location(location, port)]}))
    return Deployment(location, config, env, port, workspace)


def grpc_location(name: str, port: int) -> dict[str, Any]:
    return {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": name}}


@pytest.fixture
def deployments(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3: Any,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[Deployment]]:
    """One Dagster instance on PostgreSQL (deploy/dagster.yaml) and two code locations on
    it: the warehouse on PostgreSQL, and a lake with a PostgreSQL catalog and its files
    on S3."""
    suffix = tmp_path.name.replace("-", "_").lower()[-20:]
    dagster_db = f"dagster_{suffix}"
    postgres_server.create_database(dagster_db)
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
    base_env = {**os.environ, "DAGSTER_HOME": str(home)}
    lake_bucket = f"km-lake-{suffix.replace('_', '-')}"
    s3.create_bucket(Bucket=lake_bucket)
    warehouses = {
        "postgres": WarehouseSettings(
            backend="postgres",
            postgres_url=postgres_server.create_database(f"km_{suffix}"),
        ),
        "lake": WarehouseSettings(
            backend="ducklake",
            ducklake_catalog=postgres_server.create_database(f"km_lake_{suffix}"),
            ducklake_data_path=f"s3://{lake_bucket}/lake/",
        ),
    }
    prefixes = {"postgres": "", "lake": "lake_"}
    yield [
        make_deployment(
            f"kmdagster_{name}", prefixes[name], warehouse, tmp_path, s3_server, s3, base_env
        )
        for name, warehouse in warehouses.items()
    ]


def test_daemon_on_postgres_imports_four_sources_and_recovers_killed_runs(
    tmp_path: Path, s3: Any, deployments: list[Deployment]
) -> None:
    """Both code locations under one daemon: in each, accounts' run is killed with its code
    server mid-import and resumed; orders imports beside it (on the lake, held until the
    resumed accounts run is going) and its backlog by `kmdagster backfill`."""
    big = km_file(seed=1, repeats=80_000)  # 39 MB, 640,000 lines: about 38 chunks
    order_file = km_file(seed=2, repeats=500)
    backlog_file = km_file(seed=3, repeats=2)
    for deployment in deployments:
        s3.put_object(Bucket=deployment.accounts.bucket, Key=deployment.big_key, Body=big.data)
        first, *backlog = deployment.order_keys
        s3.put_object(Bucket=deployment.orders.bucket, Key=first, Body=order_file.data)
        for key in backlog:
            s3.put_object(Bucket=deployment.orders.bucket, Key=key, Body=backlog_file.data)

    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump({"load_from": [grpc_location(d.location, d.port) for d in deployments]})
    )
    for deployment in deployments:
        deployment.start_server(tmp_path / f"{deployment.location}-server.log")
    env = deployments[0].env  # the daemon's: the instance is the same for every location
    daemon = None
    try:
        daemon = start(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, tmp_path / "daemon.log"
        )
        for deployment in deployments:
            confirm(deployment.accounts, deployment)
        with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            for deployment in deployments:
                lose_the_machine(instance, deployment, len(big.data))
            for deployment in deployments:  # new machines
                deployment.start_server(tmp_path / f"{deployment.location}-server-2.log")
            for deployment in deployments:
                # The second source starts while the first resumes: neither waits.
                confirm(deployment.orders, deployment)
            for deployment in deployments:
                partitions = f"{deployment.orders.name}_files"
                wait_for(
                    f"{deployment.orders.name}' files registered",
                    lambda: len(instance.get_dynamic_partitions(partitions)) == 1 + BACKLOG,  # noqa: B023
                    timeout=60,
                )
                backfill(deployment.orders, deployment)
            for deployment in deployments:
                if deployment.held:  # both sources' runs at once, then orders is released
                    wait_for_runs_side_by_side(instance, deployment)
                    (tmp_path / RELEASE).touch()
            runs = {d.location: wait_until_done(instance, d) for d in deployments}
    finally:
        if daemon is not None:
            stop_process_group(daemon)
        for deployment in deployments:
            if deployment.server is not None:
                stop_process_group(deployment.server)

    for deployment in deployments:
        records, order_runs = runs[deployment.location]
        check_deployment(s3, deployment, records, order_runs, big, order_file, backlog_file)


def lose_the_machine(instance: DagsterInstance, deployment: Deployment, size: int) -> None:
    """Once an accounts run has committed a chunk and the file has more to go, the machine
    is lost: SIGKILL to the location's code server and the run worker it started. (Orders
    is switched on afterwards: a run of it in flight would die with the machine.)"""
    warehouse, key = deployment.config.warehouse, deployment.big_key
    started = RunsFilter(
        tags={SOURCE_TAG: deployment.accounts.name}, statuses=[DagsterRunStatus.STARTED]
    )
    [killed] = wait_for(
        f"a run of {key} part-imported",
        lambda: (
            ledger(warehouse).get(key, ("pending",))[0] == "in_progress"
            and instance.get_runs(started)
        ),
        timeout=150,
        every=0.05,
    )
    worker = wait_for("the run worker's pid", lambda: run_pid(instance, killed.run_id), 10)
    assert deployment.server is not None
    os.killpg(deployment.server.pid, signal.SIGKILL)
    deployment.server.wait(timeout=30)
    wait_for("the run worker gone", lambda: not Path(f"/proc/{worker}").exists(), 10)
    assert ledger(warehouse)[key][1] < size, "the file finished before the kill"
    deployment.killed_run = killed.run_id


def wait_until_done(
    instance: DagsterInstance, deployment: Deployment
) -> tuple[list[Any], list[Any]]:
    """Until every file of the location is archived, its killed run failed by run
    monitoring, an accounts run succeeded and no orders run is active; the run records of
    accounts and of orders."""
    warehouse = deployment.config.warehouse
    accounts, orders = deployment.accounts.name, deployment.orders.name
    wait_for(
        f"every file of {deployment.location} archived",
        lambda: all(
            ledger(warehouse).get(key, ("",))[0] == "archived"
            for key in (deployment.big_key, *deployment.order_keys)
        ),
        timeout=FINISH_SECONDS,
        every=1.0,
    )
    dead = instance.get_run_by_id(deployment.killed_run)
    assert dead is not None and dead.status == DagsterRunStatus.FAILURE
    messages = [entry.message for entry in instance.all_logs(deployment.killed_run)]
    assert any("exceeding maximum runtime" in (m or "") for m in messages), (
        "run monitoring did not fail the dead run"
    )

    # The archive is the run's last step; the run reports success just after it.
    def accounts_runs_once_one_succeeded() -> list[Any] | None:
        runs = instance.get_run_records(RunsFilter(tags={SOURCE_TAG: accounts}))
        succeeded = any(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
        return list(runs) if succeeded else None

    records = wait_for(f"a {accounts} run successful", accounts_runs_once_one_succeeded, 60)
    order_runs = wait_for(
        f"every {orders} run ended",
        lambda: (
            None
            if instance.get_runs(
                RunsFilter(tags={SOURCE_TAG: orders}, statuses=ACTIVE_RUN_STATUSES)
            )
            else list(instance.get_run_records(RunsFilter(tags={SOURCE_TAG: orders})))
        ),
        timeout=120,
    )
    return records, order_runs


def check_deployment(
    s3: Any,
    deployment: Deployment,
    records: list[Any],
    order_runs: list[Any],
    big: Any,
    order_file: Any,
    backlog_file: Any,
) -> None:
    warehouse = deployment.config.warehouse
    # Nothing holds one source's runs behind the other's: no run carries the one-writer
    # tag, the only warehouse limit of the shipped run queue.
    assert not [r for r in [*records, *order_runs] if ONE_WRITER_TAG in r.dagster_run.tags]
    limits = deploy_instance_settings()["run_queue"]["tag_concurrency_limits"]
    assert [limit["value"] for limit in limits if limit["key"] == ONE_WRITER_TAG] == ["true"]
    # On the lake, the run records show an accounts run and an orders run in progress at once.
    resumed = [r for r in records if r.dagster_run.status == DagsterRunStatus.SUCCESS]
    assert not deployment.held or any(
        a.start_time < o.end_time and o.start_time < a.end_time  # type: ignore[operator]
        for a in resumed
        for o in order_runs
    ), [(r.dagster_run.tags[SOURCE_TAG], r.start_time, r.end_time) for r in [*records, *order_runs]]
    assert ledger(warehouse)[deployment.big_key][2] >= 2  # the killed run and the one resuming
    assert_file_loaded_once(warehouse, deployment.big_key, big)
    first, *backlog = deployment.order_keys
    assert_file_loaded_once(warehouse, first, order_file)
    for key in backlog:
        assert_file_loaded_once(warehouse, key, backlog_file)
    # The backfill's runs took orders' waiting files; no two orders runs overlapped.
    backfilled = [r for r in order_runs if BACKFILL_ID_TAG in r.dagster_run.tags]
    assert any(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in backfilled), [
        (r.dagster_run.tags, r.dagster_run.status) for r in order_runs
    ]
    spans = sorted((r.start_time, r.end_time) for r in order_runs if r.start_time)
    overlaps = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]  # type: ignore[operator]
    assert overlaps == [], spans
    for source, key in ((deployment.accounts, deployment.big_key), (deployment.orders, first)):
        listed = [item["Key"] for item in s3.list_objects_v2(Bucket=source.bucket)["Contents"]]
        assert [k for k in listed if not k.startswith(ARCHIVE_PREFIX)] == []
        assert any(k.endswith(f"/{key}") for k in listed)


def wait_for_runs_side_by_side(instance: DagsterInstance, deployment: Deployment) -> None:
    """Until an orders run (held) and an accounts run other than the killed one both run."""

    def in_progress(source: str) -> list[str]:
        started = RunsFilter(tags={SOURCE_TAG: source}, statuses=[DagsterRunStatus.STARTED])
        return [r.run_id for r in instance.get_runs(started) if r.run_id != deployment.killed_run]

    accounts, orders = deployment.accounts.name, deployment.orders.name
    wait_for(f"an {orders} run", lambda: in_progress(orders), timeout=300)
    wait_for(
        f"an {accounts} run beside the {orders} run",
        lambda: in_progress(accounts) and in_progress(orders),
        timeout=300,
        every=0.1,
    )


def backfill(source: SourceConfig, deployment: Deployment) -> None:
    """`kmdagster backfill SOURCE`: a Dagster backfill of the source's waiting files."""
    done = subprocess.run(
        [str(BIN / "kmdagster"), "backfill", source.name],
        env=deployment.env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout.startswith("backfill "), done.stdout + done.stderr


def confirm(source: SourceConfig, deployment: Deployment) -> None:
    """`kmdagster confirm`: the source's sensor and schedule switched on."""
    done = subprocess.run(
        [str(BIN / "kmdagster"), "confirm", source.name, "--workspace", str(deployment.workspace)],
        env=deployment.env,
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
