"""A throwaway PostgreSQL cluster for the tests and benches: Debian's server, started with
``initdb`` and ``pg_ctl`` as the ``postgres`` user (it refuses to run as root), listening on a
Unix socket in a temporary folder only (no TCP port, nothing to collide with), trust
authentication (the socket's folder is the only way in), and removed with ``stop()``.

``available()`` says why not where the server is missing, so a test can skip with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import AgentError

USER = "postgres"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def available() -> str:
    """"" when a cluster can be started here, else why not (for a skip)."""
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

    def start(self) -> Postgres:
        why = available()
        if why:
            raise AgentError(why)
        self._bin = _bin_dir()
        entry = pwd.getpwnam(USER)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        self._as_postgres("initdb", "-D", str(self.data), "-U", USER, "--auth=trust",
                          "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        self._as_postgres("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                          "-o", f"-k {self.root} -c listen_addresses='' -c fsync=on "
                          "-c max_connections=50", "start")
        return self

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
        if self._bin is not None and self.data.exists():
            self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                              check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _as_postgres(self, tool: str, *args: str, check: bool = True) -> None:
        assert self._bin is not None
        command = [str(self._bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                cwd=self.root)
        if check and result.returncode != 0:
            raise AgentError(f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}")
