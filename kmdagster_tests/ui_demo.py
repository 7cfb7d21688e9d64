"""A small source in every state, for the browser test: archived, in progress, pending.

``prepare_ui_demo`` does what the daemon would (sensor ticks reported to the instance,
import runs of the job), so the Dagster webserver started on the same DAGSTER_HOME shows
real materializations, observations and check results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterInstance

from kmdagster.config import KmConfig
from kmdagster.defs.factory import build_definitions
from kmdagster_dev.instance_yaml import write_instance_yaml
from kmdagster_dev.km_files import KmFile, km_file
from kmdagster_tests.helpers import ACCOUNTS
from kmdagster_tests.ticks import report_sensor_tick

ROOT = Path(__file__).resolve().parent.parent
ARCHIVED_KEY = "accounts.1764460800.json"  # imported in full, then archived
IN_PROGRESS_KEY = "accounts.1764464400.json"  # one budget-stopped run so far
PENDING_KEY = "accounts.1764468000.json"  # registered, not yet imported


@dataclass(frozen=True)
class UiDemo:
    archived: KmFile
    in_progress: KmFile
    pending: KmFile


def prepare_ui_demo(
    s3: Any, bucket: str, config: KmConfig, dagster_home: Path, runs_for_archived: int = 30
) -> UiDemo:
    """Upload three files and bring each to its state; ``config`` stops runs on a tiny budget."""
    demo = UiDemo(
        archived=km_file(seed=1, repeats=4),
        in_progress=km_file(seed=2, repeats=60),
        pending=km_file(seed=3, repeats=10),
    )
    for key, file in (
        (ARCHIVED_KEY, demo.archived),
        (IN_PROGRESS_KEY, demo.in_progress),
        (PENDING_KEY, demo.pending),
    ):
        s3.put_object(Bucket=bucket, Key=key, Body=file.data)
    dagster_home.mkdir(parents=True, exist_ok=True)
    write_instance_yaml(dagster_home)
    defs = build_definitions(config)
    job = defs.resolve_job_def(ACCOUNTS.job)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        report_sensor_tick(defs, instance)
        for _ in range(runs_for_archived):  # each run commits one chunk, the last archives
            job.execute_in_process(instance=instance, partition_key=ARCHIVED_KEY)
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=ARCHIVED_KEY).get("Contents")
            if not listed:
                break
        job.execute_in_process(instance=instance, partition_key=IN_PROGRESS_KEY)
        report_sensor_tick(defs, instance)
    return demo
