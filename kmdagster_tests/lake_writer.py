"""Import one file into the configured lake from a process of its own (lake tests).

    python -m kmdagster_tests.lake_writer SOURCE KEY OTHER_SOURCE

After its first chunk commits it waits until OTHER_SOURCE's import has committed one too,
so the two processes' imports are in progress at the same time whatever the machine's
load; then it finishes the file and prints the report as JSON.
"""

from __future__ import annotations

import json
import sys
import time

from kmdagster import seams
from kmdagster.config import load_config
from kmdagster.defs.resources import build_s3_resource
from kmdagster.importer import import_file
from kmdagster.warehouse.backends import open_warehouse, read_warehouse
from kmdagster.warehouse.warehouse import LedgerRow

WAIT_SECONDS = 300.0


def other_has_committed(other: str) -> bool:
    settings = load_config().warehouse
    with read_warehouse(settings) as warehouse:
        return warehouse is not None and any(
            row.next_offset > 0 for row in warehouse.ledger_rows(other)
        )


def main() -> int:
    source_name, key, other = sys.argv[1:4]
    config = load_config()
    source = config.source(source_name)
    waited = False

    def after_commit(_row: LedgerRow) -> None:
        nonlocal waited
        if waited:
            return
        deadline = time.monotonic() + WAIT_SECONDS
        while not other_has_committed(other):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{other} committed no chunk in {WAIT_SECONDS:.0f}s")
            time.sleep(0.2)
        waited = True

    client = build_s3_resource(config).get_client()
    with open_warehouse(config.warehouse) as warehouse, seams.injected(after_commit=after_commit):
        report = import_file(client, warehouse, source, key, "lake-writer")
    print(json.dumps({"chunks": report.chunks, "read_again": report.chunks_read_again}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
