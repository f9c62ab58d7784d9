"""A throwaway PostgreSQL cluster for the tests and benches: Debian's server, made with
``initdb`` and run as the ``postgres`` user (it refuses to run as root), listening on a Unix
socket in a temporary folder only (no TCP port, nothing to collide with), trust authentication
(the socket's folder is the only way in), and removed with ``stop()``.

The server is this process's own child (not daemonised by ``pg_ctl``) and is killed with its
parent (PR_SET_PDEATHSIG, as agent/testing/broker.py does), so a test run that is killed leaves
no cluster behind.

``available()`` says why not where the server is missing, so a test can skip with the reason.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import AgentError

USER = "postgres"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def available() -> str:
    """ "" when a cluster can be started here, else why not (for a skip)."""
    if _bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; install.sh --dev)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER} user (Debian's postgresql package makes it)"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != USER:
        return f"starting a cluster needs root (to run it as {USER}) or the {USER} user"
    return ""


@dataclass
class Postgres:
    """``start()``, ``url(database)``, ``create(database)``, ``stop()``."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edge-pg-")))
    _bin: Path | None = None
    _server: subprocess.Popen[bytes] | None = None

    def start(self) -> Postgres:
        why = available()
        if why:
            raise AgentError(why)
        self._bin = bin_dir = _bin_dir()
        assert bin_dir is not None  # available() said so
        entry = pwd.getpwnam(USER)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        self._as_postgres(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        with open(self.root / "log", "wb") as log:
            self._server = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(self.data),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "max_connections=60",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_become_postgres,
            )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise AgentError(f"PostgreSQL did not start: see {self.root / 'log'}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        assert self._bin is not None
        return (
            subprocess.run(
                [str(self._bin / "pg_isready"), "-q", "-h", str(self.root)], timeout=10
            ).returncode
            == 0
        )

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = USER) -> str:
        return f"postgresql://{USER}@/{database}?host={self.root}"

    def create(self, database: str) -> str:
        """A new empty database; its URL."""
        self._as_postgres("createdb", "-h", str(self.root), "-U", USER, database)
        return self.url(database)

    def stop(self) -> None:
        if self._server is not None:
            self._server.send_signal(signal.SIGQUIT)  # immediate shutdown
            try:
                self._server.wait(10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _as_postgres(self, tool: str, *args: str) -> None:
        assert self._bin is not None
        result = subprocess.run(
            [str(self._bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
            preexec_fn=_become_postgres,
        )
        if result.returncode != 0:
            raise AgentError(f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}")


def _become_postgres() -> None:
    """In the child, before exec: the postgres user (when we are root), and death with us."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.geteuid() == 0:
        entry = pwd.getpwnam(USER)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
