"""The backlog's finish time counts what the schedule's runs do: up to max_files_per_run
files a tick within one budget, a large file resuming over ticks at the source's recent
speed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kmdagster.config import SourceConfig
from kmdagster.file_state import State
from kmdagster.markdown import status_markdown
from kmdagster.status import FileState, backlog_eta, recent_speed
from kmdagster.warehouse.warehouse import LedgerRow

NOW = datetime(2026, 12, 1, 12, 30, tzinfo=timezone.utc)
MB = 1_000_000


def source(per_run: int, budget: float = 300) -> SourceConfig:
    return SourceConfig(
        name="accounts",
        bucket="b",
        base_filename="accounts.json",
        max_files_per_run=per_run,
        time_budget_seconds=budget,
    )


def waiting(*sizes: int) -> list[FileState]:
    return [
        FileState(f"accounts.{i:04d}.json", '"e"', State.PENDING, size, True, bytes_left=size)
        for i, size in enumerate(sizes)
    ]


def hour(h: int) -> datetime:
    return NOW.replace(hour=h, minute=0)


@pytest.mark.parametrize(
    ("per_run", "files", "speed", "done_by"),
    [
        (1, 3, None, hour(15)),  # one file a tick: 13:00, 14:00, 15:00
        (1, 3, 1 * MB, hour(15)),
        (50, 120, None, hour(15)),  # fifty a tick: 50, 50, 20
        (50, 120, 1 * MB, hour(15)),  # small files take no budget to speak of
        (50, 50, None, hour(13)),
    ],
)
def test_small_files_go_as_many_a_tick_as_max_files_per_run(
    per_run: int, files: int, speed: float | None, done_by: datetime
) -> None:
    assert backlog_eta(source(per_run), waiting(*[1_000] * files), speed, NOW) == done_by


def test_a_resuming_file_takes_as_many_ticks_as_its_bytes_left_need_at_the_recent_speed() -> None:
    # 1,000 MB left at 1 MB/s: 300 s budgets at 13:00, 14:00 and 15:00, the last 100 s at
    # 16:00, where the two small files after it go too.
    files = waiting(1_000 * MB, 1_000, 1_000)
    assert backlog_eta(source(50), files, 1 * MB, NOW) == hour(16)
    # At one file a tick the small ones each wait for a tick of their own.
    assert backlog_eta(source(1), files, 1 * MB, NOW) == hour(18)
    # With no speed known, the large file is taken to fit in its tick.
    assert backlog_eta(source(50), files, None, NOW) == hour(13)


def test_nothing_waiting_has_no_finish_time() -> None:
    assert backlog_eta(source(1), [], 1 * MB, NOW) is None


def test_the_recent_speed_is_of_files_imported_in_one_run_each() -> None:
    def row(key: str, size: int, seconds: float, runs: int) -> LedgerRow:
        started = NOW - timedelta(hours=1)
        return LedgerRow(
            "accounts", key, '"e"', size, "archived", size, 0, 0, 0, 0,
            started, started + timedelta(seconds=seconds), None, None, import_runs=runs,
        )  # fmt: skip

    ledger = [
        row("a", 4 * MB, 2, 1),
        row("b", 2 * MB, 2, 1),
        row("c", 100 * MB, 3600, 2),  # resumed over hours: its span is not its speed
    ]
    assert recent_speed(ledger) == pytest.approx(1.5 * MB)
    assert recent_speed([]) is None


def test_status_says_how_the_finish_time_was_counted() -> None:
    files = waiting(1_000 * MB, 1_000)
    eta = backlog_eta(source(50), files, 1 * MB, NOW)
    text = status_markdown(source(50), files, len(files), eta, 1 * MB)
    assert (
        "Backlog: 2 files; at up to 50 files a tick within its 300 s budget and 1.0 MB/s (the "
        "source's recent imports), the backlog is done by the tick at 2026-12-01 16:00 UTC."
    ) in text
