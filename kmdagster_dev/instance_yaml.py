"""The Dagster instance settings of deploy/dagster.yaml, written into a DAGSTER_HOME.

Local runs (`make dev`, the soak test, the browser test, the kill tests) keep Dagster's
default SQLite storage in the home directory; the PostgreSQL end-to-end test takes the
file whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY_INSTANCE_YAML = Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml"


def deploy_instance_settings() -> dict[str, Any]:
    return yaml.safe_load(DEPLOY_INSTANCE_YAML.read_text())


def write_instance_yaml(
    home: Path,
    postgres_storage: bool = False,
    monitoring_poll_seconds: int | None = None,
    start_timeout_seconds: int | None = None,
) -> Path:
    """``home``/dagster.yaml from deploy/dagster.yaml: without its PostgreSQL storage
    unless asked, with run monitoring polling more often, or giving up on a run that never
    started sooner, when a test must wait for it."""
    settings = deploy_instance_settings()
    if not postgres_storage:
        del settings["storage"]
    if monitoring_poll_seconds is not None:
        settings["run_monitoring"]["poll_interval_seconds"] = monitoring_poll_seconds
    if start_timeout_seconds is not None:
        settings["run_monitoring"]["start_timeout_seconds"] = start_timeout_seconds
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path
