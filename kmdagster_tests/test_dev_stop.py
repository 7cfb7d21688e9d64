"""`make dev` stops within 10 s on SIGTERM (a service manager, CI) or SIGINT (Ctrl-C),
leaving no process: SeaweedFS, dg dev, its webserver, daemon and code server; and it
starts without Dagster's warning that `dagster dev` is superseded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest

from kmdagster_dev.seaweed import free_ports

pytestmark = pytest.mark.e2e  # make dev itself

ROOT = Path(__file__).resolve().parent.parent
STOP_SECONDS = 10.0


def processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of live processes whose environment holds ``marker``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has stopped; only its parent has not reaped it
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found[int(proc.name)] = command
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def wait_for_ui(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the Dagster UI did not answer on port {port} within {timeout}s")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_make_dev_stops_within_ten_seconds_leaving_no_process(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    s3_port, web_port = free_ports(2)
    marker = f"KMDAGSTER_DEV_STATE={tmp_path / 'state'}"
    env = {
        **os.environ,
        "KMDAGSTER_DEV_STATE": str(tmp_path / "state"),
        "KMDAGSTER_DEV_S3_PORT": str(s3_port),
        "KMDAGSTER_DEV_WEB_PORT": str(web_port),
        "KMDAGSTER_DEV_CONFIRM": "0",  # the setup steps are tested elsewhere; this is the stop
    }
    with open(tmp_path / "dev.log", "wb") as log:
        make = subprocess.Popen(
            ["make", "-s", "dev"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal or service gives it
        )
        try:
            wait_for_ui(web_port, timeout=240)
            # The daemon and the code server come up after the UI, later on a busy machine.
            deadline = time.monotonic() + 120
            while len(processes_with(marker)) < 4 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(processes_with(marker)) >= 4, processes_with(marker)

            os.killpg(make.pid, stop_signal)  # what Ctrl-C or a service manager sends
            started = time.monotonic()
            left = processes_with(marker)
            while left and time.monotonic() - started < STOP_SECONDS:
                time.sleep(0.2)
                left = processes_with(marker)
            took = time.monotonic() - started
        finally:
            for pid, command in processes_with(marker).items():  # never left to later tests
                print("left running:", command)
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            make.wait(timeout=30)
    assert not left, f"still running {took:.1f}s after {stop_signal.name}: {left}"
    # `dg dev` runs what `dagster dev` ran, without Dagster's warning that it is superseded.
    output = (tmp_path / "dev.log").read_text(errors="replace")
    assert "Dagster UI on http://127.0.0.1" in output
    assert "superseded" not in output.lower(), output
    print(f"{stop_signal.name}: every process gone in {took:.1f}s")
