"""The demo's live feed never overwrites a file it did not write.

``make dev`` re-sends the demo's large file once it is partly imported and delivers new
hours; a user who uploads under one of those keys (as the README's example does) keeps
their file. The feed runs here against a real SeaweedFS and a DuckDB warehouse, its
pauses shortened.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from kmdagster.config import WarehouseSettings
from kmdagster.warehouse.backends import open_warehouse
from kmdagster_dev import demo_feed
from kmdagster_dev.km_files import demo_file, demo_key
from kmdagster_tests.helpers import run_import

LARGE = 1  # the demo hour the feed re-sends, small here
USER_LINE = b'{"_p": "me@example.com", "_t": 1764482400, "_n": "Uploaded By Hand"}\n'


@pytest.fixture
def quick_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_feed, "LARGE_SEED", LARGE)
    monkeypatch.setattr(demo_feed, "RESENT_LINES", 50)
    monkeypatch.setattr(demo_feed, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(demo_feed, "NEW_HOUR_SECONDS", 0.01)
    monkeypatch.setattr(demo_feed, "NEW_HOURS", (6, 7))


def partly_import(s3: Any, bucket: str, warehouse_path: Path, key: str) -> None:
    """Two runs each stopped by its budget after one chunk, as the demo's schedule does."""
    with open_warehouse(WarehouseSettings(duckdb_path=str(warehouse_path))) as warehouse:
        for _ in range(demo_feed.RESEND_AFTER_RUNS):
            report = run_import(s3, warehouse, bucket, key, chunk_bytes=1024, time_budget_seconds=0)
            assert not report.ledger.is_complete


def body_of(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_the_feed_leaves_a_users_uploads_as_they_are(
    quick_feed: None, s3: Any, bucket: str, warehouse_path: Path, capsys: Any
) -> None:
    large = demo_key(LARGE)
    demo_etag = s3.put_object(Bucket=bucket, Key=large, Body=demo_file(LARGE))["ETag"]
    # The user replaces the demo's file, and uploads the next hour before the feed does.
    user_large = USER_LINE * 40
    s3.put_object(Bucket=bucket, Key=large, Body=user_large)
    s3.put_object(Bucket=bucket, Key=demo_key(6), Body=USER_LINE)
    partly_import(s3, bucket, warehouse_path, large)

    demo_feed.feed(s3, bucket, warehouse_path, threading.Event(), demo_etag)

    assert body_of(s3, bucket, large) == user_large
    assert body_of(s3, bucket, demo_key(6)) == USER_LINE
    assert body_of(s3, bucket, demo_key(7)) == demo_file(7)  # a key nobody had used
    said = capsys.readouterr().out
    assert f"{large} is no longer the demo's: not re-sent" in said
    assert f"{demo_key(6)} is already in the bucket: left as it is" in said
    assert f"{demo_key(7)} delivered" in said


def test_the_feed_re_sends_its_own_file_and_delivers_new_hours(
    quick_feed: None, s3: Any, bucket: str, warehouse_path: Path
) -> None:
    large = demo_key(LARGE)
    demo_etag = s3.put_object(Bucket=bucket, Key=large, Body=demo_file(LARGE))["ETag"]
    partly_import(s3, bucket, warehouse_path, large)

    demo_feed.feed(s3, bucket, warehouse_path, threading.Event(), demo_etag)

    assert body_of(s3, bucket, large) == demo_file(LARGE + 100, 50, 0.01)
    assert [body_of(s3, bucket, demo_key(hour)) for hour in (6, 7)] == [
        demo_file(6),
        demo_file(7),
    ]
