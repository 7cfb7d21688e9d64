"""A real PostgreSQL server for tests and the benchmark: Debian's ``postgresql`` package.

A throwaway cluster (``initdb``) in a directory of its own, listening on 127.0.0.1 only
with a password (scram-sha-256), so the product connects the way it does in production.
PostgreSQL refuses to run as root: as root the cluster belongs to, and runs as, the
``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc

from kmdagster_dev.seaweed import free_ports

INSTALL_HINT = (
    "PostgreSQL tests need the PostgreSQL server binaries (initdb, pg_ctl): "
    "`apt-get install postgresql` on Debian/Ubuntu (`.ci/run` installs it), "
    "or put a PostgreSQL bin directory on PATH"
)
DATABASE = "kmdagster"
USER = "kmdagster"


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's layout."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major_version)
    return Path(versions[-1]).parent if versions else None


def _major_version(initdb: str) -> int:
    version = Path(initdb).parent.parent.name
    return int(version) if version.isdigit() else 0


@dataclass
class PostgresServer:
    """One PostgreSQL cluster; ``start()`` returns once it accepts connections."""

    data_dir: Path
    password: str
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)  # more server settings

    @property
    def url(self) -> str:
        """A libpq URL without the password (the product takes it from PGPASSWORD)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def url_with_password(self) -> str:
        """For Dagster's instance storage, which takes one URL."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(INSTALL_HINT)
        self.port = self.port or free_ports(1)[0]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster = self.data_dir / "cluster"
        password_file = self.data_dir / "password"
        password_file.write_text(self.password)
        self._own(self.data_dir)
        self._run(
            str(bin_dir / "initdb"),
            f"--pgdata={cluster}",
            f"--username={USER}",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        )
        password_file.unlink()
        self._run(
            str(bin_dir / "pg_ctl"),
            f"--pgdata={cluster}",
            f"--log={self.data_dir / 'postgres.log'}",
            # Tests and benchmarks need no durability across a machine crash: fsync off
            # makes their many small commits cheap (production keeps the defaults).
            "-o",
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.data_dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            + "".join(f" -c {name}={value}" for name, value in self.settings.items()),
            "--wait",
            f"--timeout={int(timeout)}",
            "start",
        )
        self._create_database(timeout)
        return self

    def _create_database(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._admin(f"CREATE DATABASE {DATABASE}", database="postgres")
                return
            except adbc_driver_manager.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        """A fresh database on this server; returns its URL (without the password)."""
        self._admin(f"CREATE DATABASE {name}")
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def _admin(self, statement: str, database: str = DATABASE) -> None:
        url = f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"
        with adbc.connect(url, autocommit=True) as con, con.cursor() as cursor:
            cursor.execute(statement)

    def stop(self) -> None:
        bin_dir = postgres_bin_dir()
        cluster = self.data_dir / "cluster"
        if bin_dir is None or not (cluster / "postmaster.pid").exists():
            return
        pg_ctl = (str(bin_dir / "pg_ctl"), f"--pgdata={cluster}", "--wait", "--timeout=120")
        # A fast stop waits for the sessions still ending; on a busy machine that can
        # outlast pg_ctl's wait. What is left then is stopped at once: the data is scratch.
        for mode in ("fast", "immediate"):
            stopped = self._run(*pg_ctl, f"--mode={mode}", "stop", check=False)
            if stopped.returncode == 0 or not (cluster / "postmaster.pid").exists():
                return
        raise RuntimeError(
            f"PostgreSQL in {cluster} did not stop: {stopped.stderr.decode(errors='replace')}"
        )

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        if os.geteuid() == 0:
            command = ("runuser", "-u", "postgres", "--", *command)
        return subprocess.run(command, check=check, capture_output=True, cwd=self.data_dir)

    def _own(self, path: Path) -> None:
        """As root, give the cluster's directory to the postgres user (its tmp parents
        stay root's: it only needs to pass through them)."""
        if os.geteuid() != 0:
            return
        shutil.chown(path, "postgres", "postgres")
        for parent in path.parents:
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o001)
