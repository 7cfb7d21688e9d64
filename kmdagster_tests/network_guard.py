"""Nothing the test run starts reaches outside 127.0.0.1: a pytest plugin.

Two guards write every attempt to one log per pytest process, and a test during which
one was made fails, naming it:
- in this process, a Python audit hook on ``socket.connect``, ``socket.sendto`` and
  ``socket.getaddrinfo`` (botocore, urllib3, anything in Python);
- in every process started after it (pytest-xdist's workers, import jobs, ``dagster
  dev``, PostgreSQL, the browser), ``loopback_only.c`` preloaded with ``LD_PRELOAD``,
  under every client alike (libpq, HTTP, DNS). ``make test`` runs pytest-xdist, so the
  workers that run the tests carry both.
The attempt is refused as well as recorded, so nothing leaves the machine even when the
code that tried swallows the error. Connecting a UDP socket sends no packet (Chromium
does it to learn whether IPv6 is routed): it is refused without a record. Building the
preload needs a C compiler (``cc``): in CI its absence fails the run, elsewhere only the
audit hook guards.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LOG_ENV = "KMDAGSTER_NETWORK_LOG"
SHIM_SOURCE = Path(__file__).with_name("loopback_only.c")
LOCAL_NAMES = {"localhost", socket.gethostname()}

_log: Path | None = None
_read_up_to = 0  # bytes of the log already charged to a test


def is_local_host(host: object) -> bool:
    """Loopback addresses, this machine's names, and anything that is not a host name
    (the guard is only asked about the host of an IP address tuple)."""
    if not isinstance(host, str) or host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name only DNS can answer
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _record(line: str) -> None:
    if _log is not None:
        with _log.open("a") as log:
            log.write(f"{line} (pid {os.getpid()}, python)\n")


def audit(event: str, args: tuple[Any, ...]) -> None:
    """The audit hook: refuses (and records) what would leave loopback."""
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[-1]
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not is_local_host(host):
            what = "connect to" if event == "socket.connect" else "datagram to"
            if what == "datagram to" or getattr(sock, "type", None) != socket.SOCK_DGRAM:
                _record(f"{what} {host}:{address[1]}")
            raise OSError(101, f"the test run stays on 127.0.0.1: {what} {host} refused")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if host is not None and not is_local_host(host):
            _record(f"name lookup of {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"the test run stays on 127.0.0.1: {host}")


def _build_shim(directory: Path) -> Path | None:
    compiler = shutil.which("cc")
    if compiler is None:
        return None
    built = directory / "loopback_only.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(SHIM_SOURCE), "-ldl"],
        check=True,
        capture_output=True,
    )
    built.chmod(0o755)
    return built


def pytest_configure(config: pytest.Config) -> None:
    global _log
    # Readable and writable by every process the tests start, PostgreSQL's user included.
    directory = Path(tempfile.mkdtemp(prefix="kmdagster-network-"))
    directory.chmod(0o755)
    _log = directory / "attempts.log"
    _log.touch()
    _log.chmod(0o666)
    os.environ[LOG_ENV] = str(_log)
    sys.addaudithook(audit)
    shim = _build_shim(directory)
    if shim is None:
        if os.environ.get("CI"):
            raise pytest.UsageError("the network guard needs a C compiler (apt-get install gcc)")
        return
    preloaded = [p for p in os.environ.get("LD_PRELOAD", "").split() if p]
    os.environ["LD_PRELOAD"] = " ".join([*preloaded, str(shim)])


def take_attempts() -> list[str]:
    """Attempts recorded since the last test was charged, now charged to the caller."""
    global _read_up_to
    if _log is None:
        return []
    with _log.open("rb") as log:
        log.seek(_read_up_to)
        new = log.read()
    _read_up_to += len(new)
    return new.decode(errors="replace").splitlines()


@pytest.fixture(autouse=True)
def stays_on_loopback() -> Iterator[None]:
    """Fails the test if it, or anything it or its fixtures started, tried to reach
    another address."""
    yield
    attempts = take_attempts()
    if attempts:
        pytest.fail(
            "reached for an address outside 127.0.0.1 (refused): give the code the test "
            "server's address instead\n" + "\n".join(attempts),
            pytrace=False,
        )
