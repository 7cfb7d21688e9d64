"""The Dagster UI as an analyst sees it, in headless Chromium (Debian's, driven by Playwright).

A source with an archived, an in-progress and a pending file is served by a real
``dagster-webserver`` on 127.0.0.1; the test opens the lineage, a table's partitions with
its metadata, the data checks and the backlog check, asserts what must be visible there,
and saves screenshots (to ``$KMDAGSTER_SCREENSHOTS`` when set, as docs/screenshots/ is made).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmdagster_dev.processes import stop_process_group
from kmdagster_dev.seaweed import SeaweedS3, free_ports
from kmdagster_tests.helpers import ADMIN, make_config, write_config
from kmdagster_tests.ui_demo import (
    ARCHIVED_KEY,
    IN_PROGRESS_KEY,
    PENDING_KEY,
    UiDemo,
    prepare_ui_demo,
)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Left alone, Chromium looks for updates, sign-in and secure DNS at Google's addresses; the
# page under test is on 127.0.0.1, so every other name resolves to nothing.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-pings",
    "--disable-features=DnsOverHttps,OptimizationHints,MediaRouter",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (in the dev extras)"
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no system Chromium: install it with `apt-get install chromium` (.ci/run does)",
    ),
]
TIMEOUT_MS = 60_000


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


@pytest.fixture
def served_demo(
    tmp_path: Path, s3_server: SeaweedS3, s3: Any, bucket: str
) -> Iterator[tuple[str, UiDemo]]:
    config = make_config(
        s3_server,
        bucket,
        tmp_path / "warehouse.duckdb",
        chunk_bytes=2048,
        time_budget_seconds=0.001,
    )
    home = tmp_path / "dagster_home"
    demo = prepare_ui_demo(s3, bucket, config, home)
    [port] = free_ports(1)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KMDAGSTER_CONFIG": str(write_config(tmp_path / "kmdagster.yaml", config)),
        "AWS_ACCESS_KEY_ID": ADMIN.access_key,
        "AWS_SECRET_ACCESS_KEY": ADMIN.secret_key,
    }
    webserver = Path(sys.executable).with_name("dagster-webserver")
    with (tmp_path / "webserver.log").open("wb") as log:
        process = subprocess.Popen(
            [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/server_info", process)
        yield url, demo
    finally:
        stop_process_group(process, grace_seconds=20)


def screenshot_dir(tmp_path: Path) -> Path:
    target = Path(os.environ.get("KMDAGSTER_SCREENSHOTS") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


def dismiss_welcome(page: Any) -> None:
    """Dagster shows a one-time community dialog to a new instance; skip it if it is there."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except playwright_api.TimeoutError:
        return
    skip.click()


def test_an_analyst_sees_file_states_row_counts_and_checks(
    served_demo: tuple[str, UiDemo], tmp_path: Path
) -> None:
    url, demo = served_demo
    shots = screenshot_dir(tmp_path)
    expect = playwright_api.expect
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 960})
        page.set_default_timeout(TIMEOUT_MS)

        # The lineage: the file, the four tables, the archive.
        page.goto(f"{url}/asset-groups/accounts")
        dismiss_welcome(page)
        for name in ("s3_file", "km_events", "km_rejects", "archived_file"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        page.wait_for_timeout(2_000)  # let the graph lay itself out
        page.screenshot(path=str(shots / "lineage.png"))

        # One click on the graph: every file's state, counted and named, no dialog to open;
        # the file part imported reads apart from the one not started.
        page.get_by_text("file_states", exact=True).first.click()

        def sidebar_row(name: str) -> Any:
            return page.locator("tr").filter(has=page.get_by_text(name, exact=True)).first

        expect(sidebar_row("in_progress")).to_contain_text(IN_PROGRESS_KEY)
        expect(sidebar_row("in_progress")).to_contain_text("resume at byte")
        expect(sidebar_row("pending")).to_contain_text(PENDING_KEY)
        expect(sidebar_row("pending")).not_to_contain_text(IN_PROGRESS_KEY)
        for name, count in (("archived_files", 1), ("failed_files", 0), ("quarantined_files", 0)):
            expect(sidebar_row(name)).to_contain_text(str(count))
        page.wait_for_timeout(1_000)  # the sidebar settles
        page.screenshot(path=str(shots / "file-states-glance.png"))

        # Every registered file is a materialized partition of the file asset.
        page.goto(f"{url}/assets/accounts/s3_file?view=partitions")
        expect(page.get_by_text("Materialized (3)")).to_be_visible()
        expect(page.get_by_text("Missing (0)")).to_be_visible()

        # A table: the imported file materialized, the others not yet, with its own numbers.
        page.goto(f"{url}/assets/accounts/km_events?view=partitions")
        expect(page.get_by_text("Materialized (1)")).to_be_visible()
        expect(page.get_by_text("Missing (2)")).to_be_visible()
        page.get_by_text(ARCHIVED_KEY, exact=True).first.click()
        row_count = page.locator("tr", has_text="dagster/row_count").first
        expect(row_count).to_contain_text(str(demo.archived.events))
        expect(page.locator("tr", has_text="top_events").first).to_contain_text("signed up")
        page.screenshot(path=str(shots / "table-partition.png"), full_page=True)

        # The table's overview: its columns, and its numbers plotted file after file.
        page.goto(f"{url}/assets/accounts/km_rejects")
        expect(page.get_by_text("raw_line", exact=True).first).to_be_visible()
        page.get_by_role("button", name="Plots").click()
        expect(page.get_by_text("reject_rate_percent").first).to_be_visible()
        page.wait_for_timeout(1_000)  # the charts draw
        page.screenshot(path=str(shots / "table-plots.png"), full_page=True)

        # The data checks of the rejects table, evaluated by the import runs.
        page.goto(f"{url}/assets/accounts/km_rejects?view=checks")
        for check in ("rows_match_ledger", "lines_accounted_for"):
            expect(page.get_by_text(check, exact=True).first).to_be_visible()
        expect(page.get_by_text("reject_rate", exact=True).first).to_be_visible()
        expect(page.get_by_text("Passed").first).to_be_visible()
        page.screenshot(path=str(shots / "data-checks.png"))

        # Every file's state at a glance: the backlog check's table.
        page.goto(f"{url}/assets/accounts/s3_file?view=checks")
        expect(page.get_by_text("backlog", exact=True).first).to_be_visible()
        page.get_by_text("[Show Markdown]").first.click()
        dialog = page.get_by_role("dialog")
        for text in (ARCHIVED_KEY, "archived", IN_PROGRESS_KEY, "in_progress", PENDING_KEY):
            expect(dialog).to_contain_text(text)
        expect(dialog).to_contain_text("pending")
        page.wait_for_timeout(1_000)  # the dialog fades in
        page.screenshot(path=str(shots / "file-states.png"))

        # The Runs list: Dagster reads Success for a run stopped on its budget as for one
        # that finished its file; the outcome tag under each run's ID tells them apart.
        page.goto(f"{url}/runs")
        dismiss_welcome(page)
        stopped = page.get_by_text(re.compile(r"^kmdagster/outcome: [0-9.]+% imported, stopped"))
        expect(stopped.first).to_be_visible()
        expect(page.get_by_text("kmdagster/outcome: 100% imported: ").first).to_be_visible()
        page.screenshot(path=str(shots / "runs-list.png"))
        browser.close()
