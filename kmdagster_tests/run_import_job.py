"""Run one import of a partition in this process, as a run worker would (kill tests).

    python -m kmdagster_tests.run_import_job KEY MAX_RUNTIME_SECONDS

Reads KMDAGSTER_CONFIG and DAGSTER_HOME like the real code location; prints READY just
before the run starts so a test can time a SIGKILL into the import itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagster import DagsterInstance

from kmdagster.defs.runs import MAX_RUNTIME_TAG
from kmdagster_tests.helpers import ACCOUNTS

ROOT = Path(__file__).resolve().parent.parent


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
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            tags={MAX_RUNTIME_TAG: max_runtime},
            raise_on_error=False,
        )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
