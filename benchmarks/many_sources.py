"""Many sources on one daemon: the real ``dagster-daemon run`` with N configured sources,
one file each, from a local S3 (SeaweedFS) into a DuckDB file.

    python -m benchmarks.many_sources                   # 50 sources, 4 minutes
    python -m benchmarks.many_sources --sources 5 --minutes 2   # quick

Every sensor and schedule is switched on (``dagster sensor/schedule start --start-all``),
the daemon runs with deploy/dagster.yaml's instance settings on local storage, and the
benchmark watches: how long the definitions take to load, how long after the daemon's
start each source's file is registered (goal: within two sensor intervals), how far apart
each sensor's ticks are (its round), and how late each schedule tick is evaluated after
its minute (goal: every minute ticked, each before the next one is due: ``--tick-slack``).
Prints the figures and HOLDS/MISSED.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import yaml

from benchmarks.lake import start_bench_s3
from kmdagster import IMPORT_ENVIRONMENT
from kmdagster.config import KmConfig, S3Settings, SourceConfig, WarehouseSettings, config_yaml
from kmdagster.defs.naming import SourceNames
from kmdagster_dev.instance_yaml import write_instance_yaml
from kmdagster_dev.km_files import km_file
from kmdagster_dev.processes import stop_process_group
from kmdagster_dev.seaweed import SeaweedS3

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUCKET = "km-many-sources"


def source_names(count: int) -> list[str]:
    return [f"src{n:03d}" for n in range(count)]


def write_setup(work: Path, server: SeaweedS3, count: int, interval: int) -> dict[str, str]:
    """The configuration, workspace and instance; the environment the processes share."""
    sources = tuple(
        SourceConfig(
            name=name,
            bucket=BUCKET,
            base_filename=f"{name}.json",
            cron="* * * * *",
            sensor_interval_seconds=interval,
        )
        for name in source_names(count)
    )
    config = KmConfig(
        s3=S3Settings(endpoint_url=server.endpoint_url, region_name="us-east-1"),
        warehouse=WarehouseSettings(duckdb_path=str(work / "warehouse.duckdb")),
        sources=sources,
    )
    (work / "kmdagster.yaml").write_text(config_yaml(config))
    workspace = {"load_from": [{"python_module": {"module_name": "kmdagster.definitions"}}]}
    (work / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    home = work / "dagster_home"
    home.mkdir()
    write_instance_yaml(home)
    return {
        **IMPORT_ENVIRONMENT,
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KMDAGSTER_CONFIG": str(work / "kmdagster.yaml"),
        "PYTHONPATH": str(ROOT),
    }


def definitions_load_seconds(env: dict[str, str]) -> float:
    code = (
        "import time; started = time.perf_counter(); import kmdagster.definitions; "
        "print(time.perf_counter() - started)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def switch_on(work: Path, env: dict[str, str]) -> None:
    for kind in ("sensor", "schedule"):
        subprocess.run(
            [str(BIN / "dagster"), kind, "start", "--start-all", "-w", "workspace.yaml"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )


def watch(
    env: dict[str, str], names: list[str], started: float, seconds: float
) -> dict[str, float]:
    """Seconds after ``started`` at which each source's file was registered."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    registered: dict[str, float] = {}
    with DagsterInstance.get() as instance:
        while time.time() < started + seconds:
            for name in names:
                if name not in registered and instance.get_dynamic_partitions(
                    SourceNames(name).partitions
                ):
                    registered[name] = time.time() - started
            time.sleep(1.0)
    return registered


def ticks(
    env: dict[str, str], started: float
) -> tuple[dict[str, list[float]], dict[str, list[tuple[float, float]]]]:
    """Each sensor's tick times (evaluation starts), and each schedule's (its minute, when
    its evaluation ended), after ``started``."""
    from dagster import DagsterInstance
    from dagster._core.definitions.run_request import InstigatorType

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    sensors: dict[str, list[float]] = {}
    schedules: dict[str, list[tuple[float, float]]] = {}
    with DagsterInstance.get() as instance:
        for state in instance.all_instigator_state():
            found = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=started)
            if state.instigator_type == InstigatorType.SENSOR:
                sensors[state.instigator_name] = sorted(tick.timestamp for tick in found)
            else:  # a schedule tick's timestamp is its minute: when it ended is the lag
                schedules[state.instigator_name] = sorted(
                    (round(tick.timestamp), tick.end_timestamp or tick.timestamp) for tick in found
                )
    return sensors, schedules


def verdict(holds: bool) -> str:
    return "HOLDS" if holds else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.many_sources")
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--sensor-interval", type=int, default=30)
    # On time: evaluated before the next minute's tick is due (the cron is every minute).
    parser.add_argument("--tick-slack", type=float, default=60.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kmdagster-many-sources-"))
    server, client = start_bench_s3(work, BUCKET)
    names = source_names(args.sources)
    daemon = None
    try:
        for n, name in enumerate(names):
            client.put_object(Bucket=BUCKET, Key=f"{name}.json", Body=km_file(seed=n).data)
        env = write_setup(work, server, args.sources, args.sensor_interval)
        load = definitions_load_seconds(env)
        print(f"{args.sources} sources: definitions load in {load:.2f} s", flush=True)
        switch_on(work, env)
        started = time.time()
        with (work / "daemon.log").open("w") as log:
            daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        registered = watch(env, names, started, args.minutes * 60)
        sensors, schedules = ticks(env, started)
    finally:
        if daemon is not None:
            stop_process_group(daemon)
        server.stop()

    interval = args.sensor_interval
    file_sensors = {name: sensors.get(SourceNames(name).sensor, []) for name in names}
    gaps = [b - a for times in file_sensors.values() for a, b in pairwise(times)]
    latest = max(registered.values()) if len(registered) == len(names) else None
    print(
        f"registered: {len(registered)} of {len(names)} files, the last "
        + (f"{latest:.1f} s after the daemon started" if latest is not None else "never")
    )
    if gaps:
        print(
            f"file sensor rounds: median {statistics.median(gaps):.1f} s, max {max(gaps):.1f} s "
            f"(interval {interval} s, {len(gaps) + len(file_sensors)} ticks)"
        )
    lags, missing = [], 0
    first_minute = int(started // 60 + 1) * 60
    last_minute = int((started + args.minutes * 60) // 60) * 60 - 60
    for name in names:
        minutes = dict(schedules.get(SourceNames(name).schedule, []))
        for minute in range(first_minute, last_minute + 1, 60):
            if minute in minutes:
                lags.append(minutes[minute] - minute)
            else:
                missing += 1
    print(f"schedule ticks seen: {sum(len(t) for t in schedules.values())}")
    if lags:
        print(
            f"schedule ticks: {len(lags)} evaluated, {missing} missed; lag after the minute "
            f"median {statistics.median(lags):.1f} s, max {max(lags):.1f} s"
        )
    print("Goals:")
    on_time = latest is not None and latest <= 2 * interval
    print(f"- every file registered within two sensor intervals: {verdict(on_time)}")
    kept = bool(lags) and missing == 0 and max(lags) <= args.tick_slack
    print(
        f"- every schedule tick evaluated within {args.tick_slack:g} s of its minute: "
        f"{verdict(kept)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
