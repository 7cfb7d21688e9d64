"""The Dagster instance settings kmdagster relies on, for any DAGSTER_HOME.

Dagster reads them from the instance's ``dagster.yaml``, never from a code location, so a
project that adds kmdagster (a ``dg`` project, an existing deployment) must carry them
itself: ``kmdagster instance-settings`` prints them. ``deploy/dagster.yaml`` holds the same
with PostgreSQL storage; docs/deploy.md explains each part.
"""

from __future__ import annotations

from typing import Any

import yaml

INSTANCE_SETTINGS: dict[str, Any] = {
    # One import run per source at a time, and one writer in all of a warehouse that admits
    # one writing process (a DuckDB file, a lake on a DuckDB catalog).
    "run_queue": {
        "max_concurrent_runs": 10,
        "tag_concurrency_limits": [
            {
                "key": "kmdagster/source",
                "value": {"applyLimitPerUniqueValue": True},
                "limit": 1,
            },
            {"key": "kmdagster/one_writer", "value": "true", "limit": 1},
        ],
    },
    # A run whose process died is failed after its dagster/max_runtime tag (the source's
    # budget plus run_grace_seconds), so the next tick can go on with the file.
    "run_monitoring": {
        "enabled": True,
        "start_timeout_seconds": 180,
        "max_resume_run_attempts": 0,
        "poll_interval_seconds": 30,
    },
    # Sensors and schedules evaluated in threads: an alert sensor waiting on a slow webhook,
    # or one source's slow bucket listing, holds up no other; fifty sources' schedule
    # ticks all fall on the same minute.
    "sensors": {"use_threads": True, "num_workers": 4},
    "schedules": {"use_threads": True, "num_workers": 4},
}

HEADER = """\
# Dagster instance settings kmdagster relies on: put them in $DAGSTER_HOME/dagster.yaml
# before the daemon (dg dev, dagster dev, dagster-daemon) starts. Without them run
# monitoring is off (a killed run blocks its source until failed by hand, and
# run_grace_seconds does nothing) and runs into one DuckDB file are not serialised.
"""


def instance_settings_yaml() -> str:
    """The settings as a dagster.yaml a user copies into DAGSTER_HOME."""
    return HEADER + yaml.safe_dump(INSTANCE_SETTINGS, sort_keys=False)
