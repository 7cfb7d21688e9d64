"""Where an import's time goes, stage by stage: wall and CPU seconds summed over the
threads that ran each stage. Nothing is recorded unless a benchmark installs a
``StageTimes`` (``seams.injected(stage_times=StageTimes())``); otherwise ``timed`` costs
one attribute lookup per piece. Stages may nest (``read`` holds ``decompress``; ``archive``
holds ``rejects file``): the reader of the figures subtracts."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from kmdagster import seams


class StageTimes:
    """Seconds per stage, added from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def add(self, stage: str, wall: float, cpu: float) -> None:
        with self._lock:
            self.wall[stage] += wall
            self.cpu[stage] += cpu

    def as_dict(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {
                stage: {"wall": self.wall[stage], "cpu": self.cpu[stage]} for stage in self.wall
            }


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the block's wall and thread CPU time to ``stage``, when times are recorded."""
    times = seams.current().stage_times
    if times is None:
        yield
        return
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        times.add(stage, time.perf_counter() - wall, time.thread_time() - cpu)
