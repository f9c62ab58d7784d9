"""The box's own footing: its storage, written as the agent writes it, and its clock."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agent.box.selftest.check import Check
from agent.clock import clock_synced
from agent.config.model import Config


def disk(cfg: Config) -> Check:
    storage = Path(cfg.storage.path)
    try:
        storage.mkdir(parents=True, exist_ok=True)
        problem = _probe_as_owner(storage)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        return Check(
            "disk",
            False,
            f"{storage} is not writable: {problem}",
            "check the mount (read-only? full?) and that the edge-agent user owns it",
        )
    free_gb = shutil.disk_usage(storage).free / 1e9
    if free_gb < cfg.storage.max_gb:
        return Check(
            "disk",
            False,
            f"{free_gb:.1f} GB free at {storage}, less than storage.max_gb={cfg.storage.max_gb}",
            "free space or lower storage.max_gb",
        )
    return Check("disk", True, f"{storage} writable, {free_gb:.1f} GB free")


def _write_probe(directory: Path) -> str:
    """Write, fsync and remove a 4 KB file; "" or why not. A fresh random name opened with
    O_EXCL|O_NOFOLLOW: a file or symlink planted in the directory is never followed."""
    path = directory / f".selftest-{os.urandom(8).hex()}"
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            path.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _probe_as_owner(storage: Path) -> str:
    """The write probe as the storage's owner (the service user); "" or why it failed.

    ``sudo edge-agent selftest`` runs as root, in a directory the service user owns: root must
    not write there (a compromised service could make it touch any file), and a check passed on
    root's privileges says nothing about what the agent itself can do. So a forked child drops
    to the owner first; it only makes system calls, so forking a threaded process is safe.
    """
    st = os.stat(storage)
    if os.geteuid() != 0 or st.st_uid == 0:
        return _write_probe(storage)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(st.st_gid)
            os.setuid(st.st_uid)
            os.write(write_end, _write_probe(storage).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        problem = answer.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return f"{problem} (as uid {st.st_uid}, the directory's owner)" if problem else ""


def clock() -> Check:
    if clock_synced():
        return Check("clock", True, "synchronised (NTP)")
    return Check(
        "clock",
        False,
        "not synchronised: alarm times may be wrong",
        "check NTP: timedatectl status; the box needs a reachable time server",
    )
