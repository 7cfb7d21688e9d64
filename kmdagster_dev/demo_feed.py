"""Traffic for the local demo while `make dev` runs, so every file state shows up.

Once the large file of the fourth hour is partly imported, its sender "re-sends" it: the
first version turns ``superseded`` and the new content is imported from its start. Then
a new hour arrives every two minutes, as a live source would deliver them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kmdagster.file_state import State
from kmdagster.warehouse.warehouse import DuckDBWarehouse, WarehouseBusy
from kmdagster_dev.km_files import LARGE_SEED, demo_file, demo_key

POLL_SECONDS = 5.0
NEW_HOUR_SECONDS = 120.0
NEW_HOURS = (6, 7, 8)
RESENT_LINES = 120_000


def _partly_imported(warehouse_path: Path, key: str) -> bool:
    try:
        with DuckDBWarehouse.reader(warehouse_path, lock_wait_seconds=0) as warehouse:
            if warehouse is None:
                return False
            row = warehouse.latest_ledger_row("accounts", key)
    except WarehouseBusy:  # an import holds the file: ask again at the next poll
        return False
    return row is not None and row.status == State.IN_PROGRESS


def feed(client: Any, bucket: str, warehouse_path: Path, stop: threading.Event) -> None:
    """Re-send the large file once it is partly imported, then deliver new hours."""
    large = demo_key(LARGE_SEED)
    while not stop.wait(POLL_SECONDS):
        if _partly_imported(warehouse_path, large):
            body = demo_file(LARGE_SEED + 100, RESENT_LINES, 0.01)
            client.put_object(Bucket=bucket, Key=large, Body=body)
            print(f"demo: {large} re-sent while partly imported", flush=True)
            break
    for seed in NEW_HOURS:
        if stop.wait(NEW_HOUR_SECONDS):
            return
        client.put_object(Bucket=bucket, Key=demo_key(seed), Body=demo_file(seed))
        print(f"demo: {demo_key(seed)} delivered", flush=True)


def start_feeder(client: Any, bucket: str, warehouse_path: Path) -> threading.Event:
    """Run ``feed`` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(
        target=feed, args=(client, bucket, warehouse_path, stop), name="demo-feed", daemon=True
    ).start()
    return stop
