"""The demo shows catch-up: ``make dev``'s second source finds two days of small hours
and its runs take twenty of them each, in key order, as its configuration says. The
demo's own kmdagster.yaml is loaded against a real SeaweedFS and a DuckDB file."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dagster import DagsterInstance, SkipReason

from kmdagster.config import load_config
from kmdagster.defs.factory import build_definitions
from kmdagster.defs.naming import SourceNames
from kmdagster.defs.runs import OUTCOME_TAG
from kmdagster_dev.dev import demo_config
from kmdagster_dev.km_files import HISTORY_HOURS, HISTORY_SOURCE, demo_history_files
from kmdagster_dev.seaweed import SeaweedS3
from kmdagster_tests.helpers import warehouse_rows
from kmdagster_tests.ticks import run_tick

HISTORY = SourceNames(HISTORY_SOURCE)


def test_the_demo_history_is_caught_up_twenty_files_a_run(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str, instance: DagsterInstance
) -> None:
    port = urlparse(s3_server.endpoint_url).port
    assert port is not None
    config_path = tmp_path / "kmdagster.yaml"
    config_path.write_text(demo_config(port, tmp_path / "warehouse.duckdb", bucket))
    config = load_config(config_path)
    files = demo_history_files()
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    defs = build_definitions(config)

    outcomes, tick = [], datetime(2026, 12, 1, tzinfo=timezone.utc)
    while not isinstance(run_tick(defs, instance, tick, names=HISTORY), SkipReason):
        tick += timedelta(minutes=1)
        outcomes.append(instance.get_runs(limit=1)[0].tags[OUTCOME_TAG])
        assert len(outcomes) <= HISTORY_HOURS, "the history is not caught up"

    assert outcomes == ["20 files imported", "20 files imported", "8 files imported"]
    imported = [
        key
        for key, status in warehouse_rows(
            config.warehouse, "SELECT file_key, status FROM km_import_files ORDER BY completed_at"
        )
        if status == "archived"
    ]
    assert imported == sorted(files) and len(imported) == HISTORY_HOURS
