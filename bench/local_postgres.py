"""A throwaway PostgreSQL server for the bench's store stages and the tests (one copy for
both): Debian's ``postgresql`` package, started in a temporary data directory on 127.0.0.1
and a free port.

Postgres refuses to run as root, so as root every server command runs as the ``postgres``
user (``runuser``) on a directory it owns; as any other user it runs directly. Local
(socket) connections are trusted, TCP ones need the superuser's password, so the tests
exercise real password authentication (and its failure).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from fmnist_faust.netutil import free_port

PASSWORD = "s3cret-test-pw"  # the tests check it never reaches a log


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl (or ``PG_BIN``)."""
    override = os.environ.get("PG_BIN")
    candidates = [override] if override else glob.glob("/usr/lib/postgresql/*/bin")

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    for path in sorted(candidates, key=version, reverse=True):
        if (Path(path) / "initdb").is_file() and (Path(path) / "pg_ctl").is_file():
            return Path(path)
    return None


class LocalPostgres:
    """One server: :meth:`start`, :meth:`restart`, :meth:`stop`, :meth:`create_database`."""

    def __init__(self, bin_dir: Path, fsync: bool = False) -> None:
        """``fsync=False`` (tests): faster, and durability across a machine crash is not what they test."""
        self.bin_dir = bin_dir
        self.fsync = fsync
        self.dir = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
        self.data = self.dir / "db"
        self.log = self.dir / "pg.log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def init(self) -> LocalPostgres:
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",  # a test server: durability across a machine crash is not tested here
        )
        pwfile.unlink()
        return self

    def _options(self) -> str:
        return f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} -c fsync={'on' if self.fsync else 'off'}"

    def start(self) -> LocalPostgres:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-w", "start")
        return self

    def restart(self) -> None:
        """Fast restart: every connection is cut, the server is back within a second or two."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-m", "fast", "-w",
                  "restart")  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres", user: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
