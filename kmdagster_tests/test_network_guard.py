"""The network guard refuses and reports any reach outside 127.0.0.1, in this process and
in the processes the tests start. The in-process hook is called directly (no socket is
involved); the preloaded guard is tried in a child process inside a network namespace of
its own that has only loopback, so even a broken guard would put nothing on the wire."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from kmdagster_tests.network_guard import audit, is_local_host, take_attempts

OUTSIDE = ("192.0.2.1", 9)  # TEST-NET-1: documentation only, routed nowhere

CHILD = f"""
import socket
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.connect({OUTSIDE!r})
            print("connected")
        except OSError as exc:
            print("refused", exc.errno)
try:
    socket.getaddrinfo("kmdagster-guard-test.example.com", 443)
    print("resolved")
except socket.gaierror as exc:
    print("not resolved", exc.errno)
"""


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        (socket.gethostname(), True),
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("8.8.8.8", False),
        ("s3.amazonaws.com", False),
        (b"\0abstract", True),  # not an IP host
    ],
)
def test_only_loopback_counts_as_local(host: object, local: bool) -> None:
    assert is_local_host(host) is local


def test_the_hook_refuses_and_records_what_would_leave_loopback() -> None:
    stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with stream, datagram:
        with pytest.raises(OSError, match="stays on 127.0.0.1"):
            audit("socket.connect", (stream, OUTSIDE))
        with pytest.raises(OSError, match="stays on 127.0.0.1"):
            audit("socket.connect", (datagram, OUTSIDE))  # refused, sends nothing: no record
        with pytest.raises(OSError, match="stays on 127.0.0.1"):
            audit("socket.sendto", (datagram, OUTSIDE))
        with pytest.raises(socket.gaierror):
            audit("socket.getaddrinfo", ("s3.amazonaws.com", 443, 0, 0, 0))
        audit("socket.connect", (stream, ("127.0.0.1", 9)))
        audit("socket.getaddrinfo", ("localhost", 443, 0, 0, 0))
    pid = os.getpid()
    assert take_attempts() == [  # charged here, so this test passes
        f"connect to 192.0.2.1:9 (pid {pid}, python)",
        f"datagram to 192.0.2.1:9 (pid {pid}, python)",
        f"name lookup of s3.amazonaws.com (pid {pid}, python)",
    ]


def test_a_child_process_is_refused_below_python() -> None:
    preloaded = "loopback_only.so" in os.environ.get("LD_PRELOAD", "")
    unshare = shutil.which("unshare")
    if not preloaded or unshare is None or os.geteuid() != 0:
        assert not os.environ.get("CI"), "CI runs as root with the preloaded guard"
        pytest.skip("needs the preloaded guard (a C compiler) and root for `unshare --net`")
    out = subprocess.run(
        [unshare, "--net", "--", sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [
        "refused 101",
        "refused 101",
        f"not resolved {socket.EAI_NONAME}",
    ]
    attempts = take_attempts()
    assert len(attempts) == 2, attempts  # the UDP connect sent nothing: not recorded
    assert attempts[0].startswith("connect to 192.0.2.1:9 (pid ")
    assert attempts[1].startswith("name lookup of kmdagster-guard-test.example.com (pid ")
    assert all("python" in line and f"pid {os.getpid()}," not in line for line in attempts)
