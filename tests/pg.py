"""A real PostgreSQL server for tests: Debian's binaries, a temporary cluster, a free port.

:class:`PgServer` runs ``initdb`` and ``pg_ctl`` in a temporary directory (as
the ``postgres`` user when this runs as root, since the server refuses root),
and stops the server by its PID. The fixtures give a session-wide server and a
fresh database per test. Tests skip only when the binaries are absent and
cannot be installed (not root); CI installs them (scripts/test).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "postgres"


def pg_bin() -> Path | None:
    """The directory of the newest installed server binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    return Path(found[-1]).parent if found else None


def _major(path: str) -> int:
    with contextlib.suppress(ValueError):
        return int(Path(path).parts[-3])
    return 0


def ensure_binaries() -> Path | None:
    """The binaries, installed with apt-get when missing and this runs as root."""
    found = pg_bin()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False, env=env)
        found = pg_bin()
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One temporary PostgreSQL cluster; ``fast`` turns off fsync (tests, not benchmarks).

    Every connection is trusted unless ``hba`` gives the cluster a ``pg_hba.conf`` of its own.
    """

    def __init__(self, bindir: Path, *, fast: bool = True, hba: str | None = None) -> None:
        self.bindir = bindir
        self.fast = fast
        self.hba = hba
        self.dir = Path(tempfile.mkdtemp(prefix="jupyter-agent-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.pid: int | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            user = pwd.getpwnam(SUPERUSER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", SUPERUSER, "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self.dir,
        )
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> PgServer:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8")
        if self.hba is not None:  # e.g. passwords for every role but the superuser
            (self.data / "pg_hba.conf").write_text(self.hba)
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = self.dir / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server by its PID (a fast shutdown), then remove its directory."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = ensure_binaries()
    if bindir is None and os.geteuid() == 0:
        pytest.fail("apt-get install -y postgresql did not install the PostgreSQL server")
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin) and this "
            "is not root, so they cannot be: sudo apt-get install -y postgresql"
        )
    pytest.importorskip("psycopg", reason="pip install 'jupyter-agent[postgres]'")
    server = PgServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database()
