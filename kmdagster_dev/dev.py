"""Run kmdagster locally: SeaweedFS on 127.0.0.1 with a demo bucket, then `dg dev`.

Everything lives under .kmdagster/ (SeaweedFS data, the DuckDB warehouse, the Dagster
home), all made anew at each start so every start gives the same demo. The demo's two
sources (``accounts``: hours with a large file, re-sent and fed live; ``history``: a
backlog caught up twenty files a run) are confirmed with `kmdagster confirm` before the
UI starts (set KMDAGSTER_DEV_CONFIRM=0 to walk through setup yourself). Ctrl-C, SIGINT or SIGTERM
stops everything within a few seconds, leaving no process behind.
`.kmdagster/dev.env` holds the endpoint and the generated credentials for the AWS CLI and
the kmdagster commands (`source .kmdagster/dev.env`); they are never printed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

from kmdagster import IMPORT_ENVIRONMENT
from kmdagster_dev.demo_feed import start_feeder
from kmdagster_dev.instance_yaml import write_instance_yaml
from kmdagster_dev.km_files import (
    DEMO_DECOYS,
    HISTORY_SOURCE,
    LARGE_SEED,
    demo_files,
    demo_history_files,
    demo_key,
)
from kmdagster_dev.seaweed import PORT_FLAGS, Identity, SeaweedS3, free_ports

ROOT = Path(__file__).resolve().parent.parent

STATE = Path(os.environ.get("KMDAGSTER_DEV_STATE") or ROOT / ".kmdagster")
BUCKET = "km-imports"
S3_PORT = int(os.environ.get("KMDAGSTER_DEV_S3_PORT", "8333"))
WEB_PORT = int(os.environ.get("KMDAGSTER_DEV_WEB_PORT", "3000"))
# Servers get this long to stop on their own before what is left of them is killed.
STOP_SECONDS = 6.0

CONFIG = """\
s3:
  endpoint_url: http://127.0.0.1:{port}
  region_name: us-east-1
warehouse:
  duckdb_path: {warehouse}
sources:
  - name: accounts
    bucket: {bucket}
    base_filename: accounts.json
    cron: "* * * * *"     # every minute for the demo; the default is hourly
    sensor_interval_seconds: 15
    time_budget_seconds: 0.5  # the large demo file takes several runs; the default is 300
    chunk_bytes: 1048576
  - name: {history}
    bucket: {bucket}
    base_filename: {history}.json
    cron: "* * * * *"
    sensor_interval_seconds: 15
    max_files_per_run: 20     # a backlog is caught up twenty files a run; the default is one
    time_budget_seconds: 60
"""

ENV_FILE = """\
# kmdagster dev server: `source .kmdagster/dev.env`, then use `aws s3 ...` or `kmdagster ...`.
export AWS_ENDPOINT_URL={endpoint}
export AWS_ACCESS_KEY_ID={access_key}
export AWS_SECRET_ACCESS_KEY={secret_key}
export AWS_DEFAULT_REGION=us-east-1
export KMDAGSTER_CONFIG={config}
export DAGSTER_HOME={dagster_home}
"""


def demo_config(s3_port: int, warehouse: Path, bucket: str) -> str:
    """The demo's kmdagster.yaml: its S3 server, its DuckDB file and its two sources."""
    return CONFIG.format(port=s3_port, warehouse=warehouse, bucket=bucket, history=HISTORY_SOURCE)


def write_env_file(path: Path, identity: Identity, endpoint: str, **paths: Path) -> None:
    """The settings a shell needs to reach the dev servers; readable by its owner only."""
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(
        ENV_FILE.format(
            endpoint=endpoint,
            access_key=identity.access_key,
            secret_key=identity.secret_key,
            **{name: str(value) for name, value in paths.items()},
        )
    )


def dev_ports() -> dict[str, int]:
    """The S3 port a user points tools at; SeaweedFS's internal ports are any free ones."""
    internal = [flag for flag in PORT_FLAGS if flag != "s3.port"]
    return {"s3.port": S3_PORT, **dict(zip(internal, free_ports(len(internal)), strict=True))}


class Stop(Exception):
    """SIGINT or SIGTERM: stop everything started so far."""


def stop_on_signals() -> None:
    def stop(*_: object) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


class Servers:
    """Server processes, each the leader of its own process group, stopped together: the
    signal each stops cleanly on (dg dev: SIGINT, like Ctrl-C; SeaweedFS: SIGTERM)
    to every group at once, then SIGKILL to whatever is left after ``STOP_SECONDS``."""

    def __init__(self) -> None:
        self._groups: list[tuple[subprocess.Popen[bytes], signal.Signals]] = []

    def add(self, process: subprocess.Popen[bytes], stop_signal: signal.Signals) -> None:
        self._groups.append((process, stop_signal))

    def stop(self) -> None:
        for process, stop_signal in self._groups:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, stop_signal)
        deadline = time.monotonic() + STOP_SECONDS
        for process, _ in self._groups:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process, _ in self._groups:
            with suppress(ProcessLookupError):  # a group outlives its leader: kill every member
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_seaweed(started: ExitStack, server: SeaweedS3) -> Servers:
    """Start SeaweedFS; the ``Servers`` returned stop it, and what is added to them later,
    when ``started`` closes."""
    started.callback(server.stop)  # runs last: only if stopped while it was starting
    servers = Servers()
    started.callback(servers.stop)
    server.start()
    assert server.process is not None
    servers.add(server.process, signal.SIGTERM)
    return servers


def main() -> int:
    # Signals are handled before anything starts, so a stop never strands a server; each
    # part registers its own stop as it starts, and they run in reverse order.
    stop_on_signals()
    with ExitStack() as started:
        try:
            return run(started)
        except Stop:
            return 0
        finally:  # a second Ctrl-C must not cut the stop short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run(started: ExitStack) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    identity = Identity(
        "kmdagster-dev",
        "KMDEV" + secrets.token_hex(6).upper(),
        secrets.token_hex(20),
        ("Admin", "Read", "List", "Tagging", "Write"),
    )
    # Every start gives the same demo: the bucket, the warehouse and the instance are made
    # anew together (a warehouse or instance kept beside a fresh bucket would show
    # archived files whose archive copies are gone).
    for kept in ("seaweedfs", "dagster_home"):
        shutil.rmtree(STATE / kept, ignore_errors=True)
    for warehouse_file in STATE.glob("warehouse.duckdb*"):
        warehouse_file.unlink()
    server = SeaweedS3(STATE / "seaweedfs", (identity,), ports=dev_ports())
    servers = start_seaweed(started, server)
    client = server.client(identity)
    client.create_bucket(Bucket=BUCKET)
    files = demo_files()
    etags = {
        key: client.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]
        for key, body in files.items()
    }
    history = demo_history_files()
    for key, body in {**history, **DEMO_DECOYS}.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)

    config_path = STATE / "kmdagster.yaml"
    config_path.write_text(demo_config(S3_PORT, STATE / "warehouse.duckdb", BUCKET))
    dagster_home = STATE / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    write_instance_yaml(dagster_home)
    write_env_file(
        STATE / "dev.env",
        identity,
        server.endpoint_url,
        config=config_path,
        dagster_home=dagster_home,
    )
    env = {
        **IMPORT_ENVIRONMENT,
        **os.environ,
        "KMDAGSTER_CONFIG": str(config_path),
        "DAGSTER_HOME": str(dagster_home),
        "AWS_ACCESS_KEY_ID": identity.access_key,
        "AWS_SECRET_ACCESS_KEY": identity.secret_key,
    }
    print(
        f"SeaweedFS S3 on {server.endpoint_url}, bucket {BUCKET!r} with {len(files)} files "
        f"of source accounts and {len(history)} of source {HISTORY_SOURCE}"
    )
    print(
        "To reach it from another shell (AWS CLI, kmdagster status accounts): "
        f"source {STATE / 'dev.env'}",
        flush=True,
    )
    if os.environ.get("KMDAGSTER_DEV_CONFIRM", "1") == "1":
        # The setup a user does by hand: check, preview, then switch the source on.
        kmdagster = Path(sys.executable).with_name("kmdagster")
        for source in ("accounts", HISTORY_SOURCE):
            confirm = [str(kmdagster), "confirm", source, "--workspace", "workspace.yaml"]
            if subprocess.run(confirm, cwd=ROOT, env=env).returncode != 0:
                return 1
    print(f"Dagster UI on http://127.0.0.1:{WEB_PORT} (Ctrl-C stops everything)", flush=True)
    # `dg dev` given the workspace file starts what `dagster dev` does (webserver, daemon,
    # code server), without the warning that `dagster dev` is superseded by it.
    dg = Path(sys.executable).with_name("dg")
    # The terminal shows INFO and up; KMDAGSTER_DEV_DEBUG=1 shows every event, as the UI does.
    debug = os.environ.get("KMDAGSTER_DEV_DEBUG") == "1"
    env["KMDAGSTER_RUN_LOG_LEVEL"] = "DEBUG" if debug else "INFO"
    web = subprocess.Popen(
        [
            *(str(dg), "dev", "-h", "127.0.0.1", "-p", str(WEB_PORT), "-w", "workspace.yaml"),
            *("--log-level", "debug" if debug else "info"),
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,  # its own process group, stopped as one
    )
    servers.add(web, signal.SIGINT)
    # Live traffic for the demo: a re-sent file and new hours (KMDAGSTER_DEV_FEED=0: none).
    if os.environ.get("KMDAGSTER_DEV_FEED", "1") == "1":
        started.callback(
            start_feeder(
                client, BUCKET, STATE / "warehouse.duckdb", etags[demo_key(LARGE_SEED)]
            ).set
        )
    return web.wait()


if __name__ == "__main__":
    raise SystemExit(main())
