"""Run one import of a partition in this process, as a run worker would (kill tests).

    python -m kmdagster_tests.run_import_job KEY MAX_RUNTIME_SECONDS

Reads KMDAGSTER_CONFIG and DAGSTER_HOME like the real code location; prints READY just
before the run starts so a test can time a SIGKILL into the import itself.
"""

from __future__ import annotations

import sys

from dagster import DagsterInstance

from kmdagster.definitions import defs
from kmdagster.defs.runs import MAX_RUNTIME_TAG


def main() -> int:
    key, max_runtime = sys.argv[1], sys.argv[2]
    job = defs.resolve_job_def("accounts_import_job")
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
