"""Run one import of a partition in this process, as a run worker would (kill tests).

    python -m kmdagster_tests.run_import_job KEY MAX_RUNTIME_SECONDS
    python -m kmdagster_tests.run_import_job FIRST...LAST MAX_RUNTIME_SECONDS   # a backfill's

A range of keys is run as Dagster's backfill runs it: tagged with the range's ends and a
backfill id.

Reads KMDAGSTER_CONFIG and DAGSTER_HOME like the real code location; prints READY just
before the run starts so a test can time a SIGKILL into the import itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    BACKFILL_ID_TAG,
)

from kmdagster.defs.runs import MAX_RUNTIME_TAG
from kmdagster_tests.helpers import ACCOUNTS

ROOT = Path(__file__).resolve().parent.parent
RANGE = "..."  # cannot be in a partition key (Dagster refuses it)


def backfill_run_tags(first: str, last: str, backfill_id: str) -> dict[str, str]:
    """The tags Dagster's asset backfill gives a run of the partitions first..last."""
    return {
        ASSET_PARTITION_RANGE_START_TAG: first,
        ASSET_PARTITION_RANGE_END_TAG: last,
        BACKFILL_ID_TAG: backfill_id,
    }


def spawn_import_job(
    key: str, max_runtime: int, env: dict[str, str], stderr_path: Path
) -> subprocess.Popen[str]:
    """Start this module as a child process; its stdout says READY just before the run."""
    with stderr_path.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "kmdagster_tests.run_import_job", key, str(max_runtime)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def main() -> int:
    from kmdagster.definitions import defs  # loads KMDAGSTER_CONFIG: only in the child

    key, max_runtime = sys.argv[1], sys.argv[2]
    job = defs.resolve_job_def(ACCOUNTS.job)
    with DagsterInstance.get() as instance:
        print("READY", flush=True)
        tags = {MAX_RUNTIME_TAG: max_runtime}
        if RANGE in key:
            first, last = key.split(RANGE)
            result = job.execute_in_process(
                instance=instance,
                tags={**tags, **backfill_run_tags(first, last, "killed")},
                raise_on_error=False,
            )
        else:
            result = job.execute_in_process(
                instance=instance, partition_key=key, tags=tags, raise_on_error=False
            )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
