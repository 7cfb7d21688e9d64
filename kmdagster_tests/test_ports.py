"""Ports for test servers: each pytest-xdist worker draws from its own block, once each."""

from __future__ import annotations

import socket
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import pytest

from kmdagster_dev import seaweed


@pytest.fixture
def own_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh block list for the test, so the worker's own stays as it was."""
    monkeypatch.setattr(seaweed, "_worker_block", [])


@pytest.mark.parametrize("workers", [2, 15, 16, 64])
def test_worker_blocks_never_overlap_whatever_the_worker_count(workers: int) -> None:
    blocks = [seaweed.worker_block(f"gw{n}", workers) for n in range(workers)]
    ports = [port for block in blocks for port in block]
    assert len(ports) == len(set(ports))  # no port in two blocks
    assert min(ports) >= 10_000 and max(ports) < 32_768  # below the ephemeral range
    assert all(len(block) >= 300 for block in blocks)


@pytest.mark.usefixtures("own_block")
def test_workers_draw_apart_skip_taken_ports_and_never_repeat_one() -> None:
    seaweed.use_worker_ports("gw4", "8")
    block = seaweed.worker_block("gw4", 8)
    with socket.socket() as taken:
        with suppress(OSError):  # already taken by something else: as good for the test
            taken.bind(("127.0.0.1", block.start))
        first = seaweed.free_ports(3)
        second = seaweed.free_ports(3)
    drawn = first + second
    assert block.start not in drawn
    assert len(set(drawn)) == 6
    assert all(port in block for port in drawn)

    seaweed.use_worker_ports("gw5", "8")
    other = seaweed.free_ports(3)
    assert all(port in seaweed.worker_block("gw5", 8) for port in other)


@pytest.mark.usefixtures("own_block")
def test_a_port_another_test_run_reserved_is_skipped() -> None:
    seaweed.use_worker_ports("gw6", "8")
    block = seaweed.worker_block("gw6", 8)
    # Another run's worker on this machine holds the first free port's reservation.
    seaweed.PORT_LOCKS.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; lock = open(sys.argv[1], 'a'); "
            "fcntl.flock(lock, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(seaweed.PORT_LOCKS / str(block.start + 1)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        seaweed._worker_block[:] = range(block.start + 1, block.start + 10)
        assert block.start + 1 not in seaweed.free_ports(3)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.usefixtures("own_block")
def test_outside_a_worker_the_kernel_picks_from_its_ephemeral_range() -> None:
    seaweed.use_worker_ports(None)
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert all(low <= port <= high for port in seaweed.free_ports(3))
