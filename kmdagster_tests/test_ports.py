"""Ports for test servers: each pytest-xdist worker draws from its own block, once each."""

from __future__ import annotations

import socket
from contextlib import suppress
from pathlib import Path

import pytest

from kmdagster_tests import seaweed


@pytest.fixture
def own_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh block list for the test, so the worker's own stays as it was."""
    monkeypatch.setattr(seaweed, "_worker_block", [])


@pytest.mark.usefixtures("own_block")
def test_workers_draw_apart_skip_taken_ports_and_never_repeat_one() -> None:
    seaweed.use_worker_ports("gw4")
    start = seaweed.WORKER_PORTS_START + 4 * seaweed.WORKER_BLOCK
    with socket.socket() as taken:
        with suppress(OSError):  # already taken by something else: as good for the test
            taken.bind(("127.0.0.1", start))
        first = seaweed.free_ports(3)
        second = seaweed.free_ports(3)
    drawn = first + second
    assert start not in drawn
    assert len(set(drawn)) == 6
    assert all(start < port < start + seaweed.WORKER_BLOCK for port in drawn)

    seaweed.use_worker_ports("gw5")
    other = seaweed.free_ports(3)
    assert all(port >= start + seaweed.WORKER_BLOCK for port in other)


@pytest.mark.usefixtures("own_block")
def test_outside_a_worker_the_kernel_picks_from_its_ephemeral_range() -> None:
    seaweed.use_worker_ports(None)
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert all(low <= port <= high for port in seaweed.free_ports(3))
