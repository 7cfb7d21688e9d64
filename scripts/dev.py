"""Run kmdagster locally: SeaweedFS on 127.0.0.1 with a demo bucket, then `dagster dev`.

Everything lives under .kmdagster/ (fresh SeaweedFS data each start, DuckDB warehouse,
Dagster home). The demo source is confirmed with `kmdagster confirm` before the UI starts
(set KMDAGSTER_DEV_CONFIRM=0 to walk through setup yourself). Ctrl-C stops both servers.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kmdagster_tests.seaweed import Identity, SeaweedS3  # noqa: E402
from scripts.demo_data import DEMO_DECOYS, demo_files  # noqa: E402
from scripts.demo_feed import start_feeder  # noqa: E402

STATE = ROOT / ".kmdagster"
BUCKET = "km-imports"
S3_PORT = int(os.environ.get("KMDAGSTER_DEV_S3_PORT", "8333"))
WEB_PORT = int(os.environ.get("KMDAGSTER_DEV_WEB_PORT", "3000"))
DEV_PORTS = {
    "s3.port": S3_PORT,
    "s3.port.grpc": S3_PORT + 10000,
    "s3.port.iceberg": S3_PORT + 1,
    "s3.port.lance": S3_PORT + 2,
    "master.port": 9333,
    "master.port.grpc": 19333,
    "volume.port": 8380,
    "volume.port.grpc": 18380,
    "filer.port": 8888,
    "filer.port.grpc": 18888,
    "admin.port": 23646,
    "admin.port.grpc": 33646,
    "webdav.port": 7333,
}

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


def main() -> int:
    STATE.mkdir(exist_ok=True)
    identity = Identity(
        "kmdagster-dev",
        "KMDEV" + secrets.token_hex(6).upper(),
        secrets.token_hex(20),
        ("Admin", "Read", "List", "Tagging", "Write"),
    )
    shutil.rmtree(STATE / "seaweedfs", ignore_errors=True)
    server = SeaweedS3(STATE / "seaweedfs", (identity,), ports=dict(DEV_PORTS)).start()
    client = server.client(identity)
    client.create_bucket(Bucket=BUCKET)
    files = demo_files()
    for key, body in files.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    for key, body in DEMO_DECOYS.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)

    config_path = STATE / "kmdagster.yaml"
    config_path.write_text(
        CONFIG.format(port=S3_PORT, warehouse=STATE / "warehouse.duckdb", bucket=BUCKET)
    )
    dagster_home = STATE / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    write_env_file(
        STATE / "dev.env",
        identity,
        server.endpoint_url,
        config=config_path,
        dagster_home=dagster_home,
    )
    env = {
        **os.environ,
        "KMDAGSTER_CONFIG": str(config_path),
        "DAGSTER_HOME": str(dagster_home),
        "AWS_ACCESS_KEY_ID": identity.access_key,
        "AWS_SECRET_ACCESS_KEY": identity.secret_key,
    }
    print(f"SeaweedFS S3 on {server.endpoint_url}, bucket {BUCKET!r} with {len(files)} files")
    print(
        "To reach it from another shell (AWS CLI, kmdagster status accounts): "
        "source .kmdagster/dev.env",
        flush=True,
    )
    if os.environ.get("KMDAGSTER_DEV_CONFIRM", "1") == "1":
        # The setup a user does by hand: check, preview, then switch the source on.
        kmdagster = Path(sys.executable).with_name("kmdagster")
        confirm = [str(kmdagster), "confirm", "accounts", "--workspace", "workspace.yaml"]
        if subprocess.run(confirm, cwd=ROOT, env=env).returncode != 0:
            server.stop()
            return 1
    print(f"Dagster UI on http://127.0.0.1:{WEB_PORT} (Ctrl-C stops everything)", flush=True)
    dagster = Path(sys.executable).with_name("dagster")
    web = subprocess.Popen(
        [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(WEB_PORT), "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    # Live traffic for the demo: a re-sent file and new hours (KMDAGSTER_DEV_FEED=0: none).
    feeding = os.environ.get("KMDAGSTER_DEV_FEED", "1") == "1"
    stop_feed = start_feeder(client, BUCKET, STATE / "warehouse.duckdb") if feeding else None

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return web.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if stop_feed is not None:
            stop_feed.set()
        # dagster dev shuts down cleanly on SIGINT (Ctrl-C); escalate if it lingers.
        for escalation in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if web.poll() is not None:
                break
            os.killpg(web.pid, escalation)
            try:
                web.wait(timeout=20)
            except subprocess.TimeoutExpired:
                continue
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
