"""Stopping the servers and tools the demo, the tests and the benchmarks start."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def stop_process_group(
    process: subprocess.Popen[Any], first: int = signal.SIGTERM, grace_seconds: float = 30
) -> None:
    """Send ``first`` to the group of ``process`` (started with ``start_new_session``),
    then SIGKILL if it has not exited within ``grace_seconds``."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, first)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_seconds)
