"""The soak test (`make soak`): the product running for minutes against a busy bucket.

Two sources, each with its own bucket, under `dagster dev` (webserver, daemon, run
queue and run monitoring from deploy/dagster.yaml), a cron of one minute and a sensor
every 5 s. A writer process puts a new file every few seconds, alternating sources: every
file has bad lines, some are overwritten while they wait or import, and one key the
importing identity may not read sits first in line. After the given minutes everything
stops and the run is judged: every line of every completed file version is in the
warehouse exactly once, every file is archived or in a documented state, the unreadable
file is quarantined. It prints the figures (files, lines, runs, quarantined files, peak
RSS of each kind of process) and exits non-zero if a check failed.

    python -m kmdagster_dev.soak [--minutes 10] [--every 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from kmdagster import IMPORT_ENVIRONMENT
from kmdagster.config import load_config
from kmdagster.defs.run_history import run_outcomes
from kmdagster.s3.objects import ARCHIVE_PREFIX, FilePattern, list_matching_files
from kmdagster.status import file_states
from kmdagster.warehouse.database import Database
from kmdagster.warehouse.file_rows import duplicate_rows, rows_by_table
from kmdagster.warehouse.warehouse import DuckDBWarehouse, LedgerRow
from kmdagster_dev.dev import start_seaweed
from kmdagster_dev.instance_yaml import write_instance_yaml
from kmdagster_dev.km_files import km_file
from kmdagster_dev.seaweed import Identity, SeaweedS3, free_ports

ROOT = Path(__file__).resolve().parent.parent

SOURCES = {"accounts": "km-soak-accounts", "orders": "km-soak-orders"}
UNREADABLE = "accounts.0-unreadable.json"  # sorts first; the product may not read it
FIRST_NUMBER = 100_000  # file numbers start with 1: the product may read stem.1* to stem.9*

CONFIG = """\
s3:
  endpoint_url: {endpoint}
  region_name: us-east-1
warehouse:
  duckdb_path: {warehouse}
sources:
{sources}"""
SOURCE = """\
  - name: {name}
    bucket: {bucket}
    base_filename: {name}.json
    cron: "* * * * *"
    sensor_interval_seconds: 5
    time_budget_seconds: 0.2
    chunk_bytes: 32768
"""


def identities() -> tuple[Identity, Identity]:
    """(the writer's admin identity, the product's: every file but UNREADABLE)."""
    admin = Identity(
        "soak-admin",
        "KMSOAKA" + secrets.token_hex(6).upper(),
        secrets.token_hex(20),
        ("Admin", "Read", "List", "Write"),
    )
    grants = []
    for name, bucket in SOURCES.items():
        grants += [f"List:{bucket}", f"Write:{bucket}", f"Read:{bucket}/{ARCHIVE_PREFIX}*"]
        grants += [f"Read:{bucket}/{name}.{digit}*" for digit in range(1, 10)]
    product = Identity(
        "soak-product",
        "KMSOAKP" + secrets.token_hex(6).upper(),
        secrets.token_hex(20),
        tuple(grants),
    )
    return admin, product


def put_file(client: Any, bucket: str, key: str, seed: int, kind: str, manifest: Any) -> None:
    """Write one KM file and record what it holds, version by version. Seeds below 5,000
    keep its timestamps in the past."""
    content = km_file(seed=seed % 5000, repeats=random.Random(seed).randint(20, 400))
    etag = client.put_object(Bucket=bucket, Key=key, Body=content.data)["ETag"]
    record = {"bucket": bucket, "key": key, "etag": etag, "kind": kind, "bytes": len(content.data)}
    for name in ("lines", "events", "properties", "aliases", "rejects", "blanks"):
        record[name] = getattr(content, name)
    manifest.write(json.dumps(record) + "\n")
    manifest.flush()


def writer(endpoint: str, admin: Identity, manifest_path: Path, every: float, until: float) -> None:
    """New files every ``every`` seconds, alternating sources; one in five is overwritten
    a few seconds later with new content (waiting or mid-import)."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=admin.access_key,
        aws_secret_access_key=admin.secret_key,
    )
    names = list(SOURCES)
    rewrites: list[tuple[float, str, str]] = []
    with open(manifest_path, "a") as manifest:
        number = FIRST_NUMBER + 1
        while time.time() < until:
            name = names[number % 2]
            key, bucket = f"{name}.{number}.json", SOURCES[name]
            put_file(client, bucket, key, number, "new", manifest)
            if number % 5 == 0:
                rewrites.append((time.time() + random.uniform(2, 20), bucket, key))
            for due in [r for r in rewrites if r[0] <= time.time()]:
                rewrites.remove(due)
                put_file(client, due[1], due[2], number + 2500, "overwrite", manifest)
            number += 1
            time.sleep(every)


class RssSampler:
    """Peak RSS (VmHWM) of every process of the run, by kind, sampled each second."""

    KINDS = (
        ("weed", "SeaweedFS"),
        ("execute_run", "run worker"),
        ("spawn_main", "run worker"),  # the code server starts each run in a spawned process
        ("resource_tracker", "run worker"),
        ("dagster-webserver", "webserver"),
        ("dagster_webserver", "webserver"),
        ("dagster-daemon", "daemon"),
        ("_daemon", "daemon"),
        ("api grpc", "code server"),
        ("code-server", "code server"),
        ("dagster dev", "dagster dev"),
        ("--writer", "writer"),
        ("confirm", "setup (kmdagster confirm)"),
        ("sensor start", "setup (kmdagster confirm)"),
        ("schedule start", "setup (kmdagster confirm)"),
    )

    def __init__(self, marker: str) -> None:
        self.marker = marker.encode()
        self.peak_mb: dict[str, float] = {}
        self.processes: Counter[str] = Counter()
        self.unclassified: set[str] = set()
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    self._sample(proc)

    def _sample(self, proc: Path) -> None:
        try:
            if self.marker not in (proc / "environ").read_bytes():
                return
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (proc / "status").read_text()
        except OSError:
            return
        kind = next((k for needle, k in self.KINDS if needle in command), "other")
        if kind == "other":
            self.unclassified.add(command[:160])
        if int(proc.name) not in self._seen:
            self._seen.add(int(proc.name))
            self.processes[kind] += 1
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                mb = int(line.split()[1]) / 1024
                self.peak_mb[kind] = max(self.peak_mb.get(kind, 0.0), mb)


def verify(config_path: Path, client: Any, manifest_path: Path, instance: Any) -> dict[str, Any]:
    """Check every completed version against what was written; count states and runs."""
    config = load_config(config_path)
    written = {}
    for line in manifest_path.read_text().splitlines():
        record = json.loads(line)
        written[(record["bucket"], record["key"], record["etag"])] = record
    problems: list[str] = []
    states: Counter[str] = Counter()
    loaded_lines = completed = 0
    with DuckDBWarehouse.reader(config.warehouse.duckdb_path) as warehouse:
        assert warehouse is not None, "no warehouse: nothing was imported"
        for source in config.sources:
            rows = warehouse.ledger_rows(source.name)
            for row in rows:
                if row.is_complete:
                    completed += 1
                    loaded_lines += row.lines_loaded
                    problems += check_version(warehouse.database, written, source.bucket, row)
            pattern = FilePattern.from_base_filename(source.base_filename)
            root = list(list_matching_files(client, source.bucket, pattern))
            outcomes = run_outcomes(instance, source, config.warehouse, root)
            quarantined = outcomes.quarantined
            for state in file_states(root, rows, outcomes):
                states[state.state] += 1
            if source.name == "accounts" and UNREADABLE not in quarantined:
                problems.append(
                    f"{UNREADABLE} is not quarantined (that takes three failed runs, one a "
                    "minute: soak for at least 4 minutes)"
                )
    failed = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
    succeeded = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
    return {
        "problems": problems,
        "states": dict(states),
        "files_written": len({(b, k) for b, k, _ in written}),
        "versions_written": len(written),
        "lines_written": sum(r["lines"] for r in written.values()),
        "versions_completed": completed,
        "lines_loaded": loaded_lines,
        "runs_succeeded": succeeded,
        "runs_failed": failed,
    }


def check_version(
    database: Database, written: dict[Any, Any], bucket: str, row: LedgerRow
) -> list[str]:
    """A completed version holds exactly the lines the writer put in it, once each."""
    record = written.get((bucket, row.file_key, row.file_etag))
    where = f"s3://{bucket}/{row.file_key} ({row.file_etag})"
    if record is None:
        return [f"{where}: imported, but the writer never wrote this version"]
    problems = []
    expected = {
        "lines_read": record["lines"],
        "lines_rejected": record["rejects"],
        "lines_blank": record["blanks"],
        "events_rows": record["events"],
        "properties_rows": record["properties"],
        "aliases_rows": record["aliases"],
    }
    for name, value in expected.items():
        if getattr(row, name) != value:
            problems.append(f"{where}: {name} {getattr(row, name)}, written {value}")
    for table, rows in rows_by_table(database, row).items():
        duplicates = duplicate_rows(database, row, table)
        if duplicates:
            problems.append(f"{where}: {duplicates} duplicate rows in {table}")
        if rows != row.rows_in(table):
            problems.append(f"{where}: {table} holds {rows} rows, ledger {row.rows_in(table)}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m kmdagster_dev.soak")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=4.0, help="seconds between new files")
    parser.add_argument("--state", default=str(ROOT / ".kmdagster" / "soak"))
    parser.add_argument("--writer", nargs=3, metavar=("ENDPOINT", "MANIFEST", "UNTIL"))
    args = parser.parse_args()
    admin, product = identities()
    if args.writer:  # the writer process
        endpoint, manifest, until = args.writer
        admin = Identity("soak-admin", os.environ["SOAK_KEY"], os.environ["SOAK_SECRET"], ())
        writer(endpoint, admin, Path(manifest), args.every, float(until))
        return 0

    state = Path(args.state)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    marker_env = {"KMDAGSTER_SOAK": str(state)}
    os.environ.update(marker_env)  # every process of the run carries it: RSS is sampled by it
    sampler = RssSampler(f"KMDAGSTER_SOAK={state}").start()
    with ExitStack() as started:
        server = SeaweedS3(state / "seaweedfs", (admin, product))
        servers = start_seaweed(started, server)
        client = server.client(admin)
        manifest_path = state / "manifest.jsonl"
        with open(manifest_path, "w") as manifest:
            for number, (name, bucket) in enumerate(SOURCES.items(), start=FIRST_NUMBER - 10):
                client.create_bucket(Bucket=bucket)
                put_file(client, bucket, f"{name}.{number}.json", number, "new", manifest)
        config_path = state / "kmdagster.yaml"
        config_path.write_text(
            CONFIG.format(
                endpoint=server.endpoint_url,
                warehouse=state / "warehouse.duckdb",
                sources="".join(SOURCE.format(name=n, bucket=b) for n, b in SOURCES.items()),
            )
        )
        home = state / "dagster_home"
        home.mkdir()
        write_instance_yaml(home)
        env = {
            **IMPORT_ENVIRONMENT,
            **os.environ,
            "KMDAGSTER_CONFIG": str(config_path),
            "DAGSTER_HOME": str(home),
            "AWS_ACCESS_KEY_ID": product.access_key,
            "AWS_SECRET_ACCESS_KEY": product.secret_key,
        }
        kmdagster = Path(sys.executable).with_name("kmdagster")
        for name in SOURCES:
            confirm = [str(kmdagster), "confirm", name, "--workspace", "workspace.yaml"]
            done = subprocess.run(confirm, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"kmdagster confirm {name} failed:\n{done.stdout}{done.stderr}")
        with open(manifest_path, "a") as manifest:  # after the setup check, which reads it
            put_file(client, SOURCES["accounts"], UNREADABLE, 1, "unreadable", manifest)
        (web_port,) = free_ports(1)
        dagster = Path(sys.executable).with_name("dagster")
        with open(state / "dagster.log", "wb") as log:
            web = subprocess.Popen(
                [
                    str(dagster),
                    "dev",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(web_port),
                    "-w",
                    "workspace.yaml",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        servers.add(web, signal.SIGINT)
        until = time.time() + args.minutes * 60
        print(f"soak: {args.minutes:g} min; UI on http://127.0.0.1:{web_port}", flush=True)
        writer_process = subprocess.Popen(
            [sys.executable, __file__, "--every", str(args.every), "--writer",
             server.endpoint_url, str(manifest_path), str(until)],
            env={**os.environ, "SOAK_KEY": admin.access_key, "SOAK_SECRET": admin.secret_key},
        )  # fmt: skip
        started.callback(writer_process.kill)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop everything started
        writer_process.wait(timeout=args.minutes * 60 + 120)
        time.sleep(15)  # the last sensor tick and run
        # dagster dev alone (its runs finish first); SeaweedFS still serves the checks.
        os.killpg(web.pid, signal.SIGINT)
        web.wait(timeout=60)
        sampler.stop()
        os.environ["AWS_ACCESS_KEY_ID"] = product.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = product.secret_key
        with DagsterInstance.from_config(str(home)) as instance:
            figures = verify(config_path, client, manifest_path, instance)
    figures["processes"] = dict(sampler.processes)
    figures["peak_rss_mb"] = {k: round(v) for k, v in sorted(sampler.peak_mb.items())}
    figures["unclassified_processes"] = sorted(sampler.unclassified)[:10]
    print(json.dumps(figures, indent=2))
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
