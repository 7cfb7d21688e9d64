"""Traffic for the local demo while `make dev` runs, so every file state shows up.

Once two runs have imported parts of the large file of the fourth hour (its percent and
resume offset grow in the UI), its sender "re-sends" it: the first version turns
``superseded`` and the new content is imported from its start. Then
a new hour arrives every two minutes, as a live source would deliver them.

The feed never overwrites an object it did not write: a new hour is put only where no
object is (``If-None-Match: *``), and the re-send only over the very version the demo put
(``If-Match`` its ETag). A file a user uploaded under one of those keys stays as uploaded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from kmdagster.file_state import State
from kmdagster.s3.objects import is_precondition_failure
from kmdagster.warehouse.warehouse import DuckDBWarehouse, WarehouseBusy
from kmdagster_dev.km_files import LARGE_SEED, demo_file, demo_key

POLL_SECONDS = 5.0
NEW_HOUR_SECONDS = 120.0
NEW_HOURS = (6, 7, 8)
RESENT_LINES = 120_000
RESEND_AFTER_RUNS = 2  # runs that committed parts of the large file before it is re-sent


def _partly_imported(warehouse_path: Path, key: str) -> bool:
    try:
        with DuckDBWarehouse.reader(warehouse_path, lock_wait_seconds=0) as warehouse:
            if warehouse is None:
                return False
            row = warehouse.latest_ledger_row("accounts", key)
    except WarehouseBusy:  # an import holds the file: ask again at the next poll
        return False
    return (
        row is not None and row.status == State.IN_PROGRESS and row.import_runs >= RESEND_AFTER_RUNS
    )


def put_unless_taken(client: Any, bucket: str, key: str, body: bytes, **condition: str) -> bool:
    """Put ``body`` at ``key`` if ``condition`` (``IfNoneMatch``/``IfMatch``) holds; False,
    with nothing written, when the object there is not the one the condition names."""
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, **condition)
    except ClientError as exc:
        if is_precondition_failure(exc):
            return False
        raise
    return True


def feed(
    client: Any, bucket: str, warehouse_path: Path, stop: threading.Event, large_etag: str
) -> None:
    """Re-send the large file (the version of ETag ``large_etag``) once runs have imported
    parts of it, then deliver new hours, each only where no object is."""
    large = demo_key(LARGE_SEED)
    while not stop.wait(POLL_SECONDS):
        if _partly_imported(warehouse_path, large):
            body = demo_file(LARGE_SEED + 100, RESENT_LINES, 0.01)
            if put_unless_taken(client, bucket, large, body, IfMatch=large_etag):
                print(f"demo: {large} re-sent while partly imported", flush=True)
            else:
                print(f"demo: {large} is no longer the demo's: not re-sent", flush=True)
            break
    for seed in NEW_HOURS:
        if stop.wait(NEW_HOUR_SECONDS):
            return
        key = demo_key(seed)
        if put_unless_taken(client, bucket, key, demo_file(seed), IfNoneMatch="*"):
            print(f"demo: {key} delivered", flush=True)
        else:
            print(f"demo: {key} is already in the bucket: left as it is", flush=True)


def start_feeder(
    client: Any, bucket: str, warehouse_path: Path, large_etag: str
) -> threading.Event:
    """Run ``feed`` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(
        target=feed,
        args=(client, bucket, warehouse_path, stop, large_etag),
        name="demo-feed",
        daemon=True,
    ).start()
    return stop
