"""A real S3-compatible server for development and tests: SeaweedFS ``weed mini``.

It binds to 127.0.0.1 only, sends no telemetry, pins every port it opens, keeps its data
in a directory of its own and requires signed requests (an identities file).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from kmdagster_dev.processes import stop_process_group

PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


@dataclass(frozen=True)
class Identity:
    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


@dataclass
class SeaweedS3:
    """One ``weed mini`` process; ``start()`` returns once S3 answers."""

    data_dir: Path
    identities: tuple[Identity, ...]
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        config_path = self.data_dir / "s3-identities.json"
        config_path.write_text(json.dumps(identities_document(self.identities)))
        os.chmod(config_path, 0o600)
        command = [weed, *seaweed_command(self.data_dir, config_path, self.ports)]
        (self.data_dir / "data").mkdir(exist_ok=True)
        log = open(self.data_dir / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
        # weed mini makes a scratch folder in the temp directory at every start and leaves
        # it: point it inside the data directory so nothing is left outside.
        scratch = self.data_dir / "tmp"
        scratch.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
        self._wait_until_ready(timeout)
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        admin = self.identities[0]
        client = self.client(admin)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited; see {self.data_dir / 'weed.log'}")
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"SeaweedFS S3 did not answer within {timeout}s; "
                        f"see {self.data_dir / 'weed.log'}"
                    ) from None
                time.sleep(0.3)

    def client(self, identity: Identity, endpoint_url: str | None = None) -> Any:
        """A client signed as ``identity``; ``endpoint_url`` reaches it through a proxy."""
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=identity.access_key,
            aws_secret_access_key=identity.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_process_group(self.process, grace_seconds=15)
        # The gRPC sockets have no flag: weed names them by port under /tmp. The ports were
        # this server's, so the sockets named for them are too.
        for port in self.ports.values():
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)


def seaweed_command(data_dir: Path, config_path: Path, ports: dict[str, int]) -> list[str]:
    """``weed`` arguments: bound to 127.0.0.1, no telemetry, signed requests, pinned ports."""
    return [
        "mini",
        f"-dir={data_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        # Each bucket takes a few volumes; by default their number is capped by free disk
        # space / 128 MB, which a test session's hundred buckets can exhaust on a fuller
        # disk ("no writable volumes"). Volumes are created empty and grow on demand.
        "-volume.max=2000",
        f"-s3.config={config_path}",
        # Its local sockets default to /tmp, where a stopped server leaves them.
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        f"-s3.localSocket={data_dir / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]


def identities_document(identities: tuple[Identity, ...]) -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": identity.name,
                "credentials": [
                    {"accessKey": identity.access_key, "secretKey": identity.secret_key}
                ],
                "actions": list(identity.actions),
            }
            for identity in identities
        ]
    }


# Under pytest-xdist each worker takes ports from a block of its own below Linux's
# ephemeral range (32768-60999): between the check that a port is free and its server
# binding it, neither another worker nor the kernel (for an outgoing connection) can take
# it. The range is split by the number of workers, so blocks never overlap whatever the
# core count, and each port handed out is also reserved with a lock file held for the
# worker's life, so a second test run on the same machine skips it. Elsewhere (make dev,
# the soak test, a single pytest process) the kernel picks. Only the worker itself turns
# this on (conftest.py): its subprocesses keep the kernel's pick, so they never draw a
# port the worker handed out for them to bind later.
WORKER_PORTS = range(10_000, 32_768)
PORT_LOCKS = Path(tempfile.gettempdir()) / "kmdagster-test-ports"
_worker_block: list[int] = []  # the ports of this process's block not yet handed out
_held_locks: list[Any] = []  # open lock files: the reservations end with the process


def worker_block(worker_name: str, worker_count: int) -> range:
    """Worker ``gwN``'s share of ``WORKER_PORTS``, one of ``worker_count`` equal blocks."""
    size = len(WORKER_PORTS) // max(worker_count, 1)
    start = WORKER_PORTS.start + size * int(worker_name[2:])
    return range(start, start + size)


def use_worker_ports(worker_name: str | None, worker_count: str | None = None) -> None:
    """Hand out ports from pytest-xdist worker ``worker_name``'s (gw0, gw1, ...) block."""
    if worker_name and worker_name.startswith("gw"):
        _worker_block[:] = worker_block(worker_name, int(worker_count or "1"))


def _reserve(port: int) -> bool:
    """Hold ``port``'s lock file for this process's life; False if another process does."""
    PORT_LOCKS.mkdir(exist_ok=True)
    lock = (PORT_LOCKS / str(port)).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return False
    _held_locks.append(lock)
    return True


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    if _worker_block:
        return worker_ports(count)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def worker_ports(count: int) -> list[int]:
    """``count`` free ports from this worker's block, each handed out once."""
    ports = []
    while len(ports) < count:
        if not _worker_block:
            raise RuntimeError("this pytest worker has handed out every port of its block")
        port = _worker_block.pop(0)
        if not _reserve(port):
            continue  # handed out by a worker of another test run
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken by something else on this machine
        ports.append(port)
    return ports
