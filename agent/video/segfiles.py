"""Segment files on disk: their names, an atomic and durable write, and a failing disk in words a
technician can act on.

A file is written under a temporary name in the same directory, fsynced, renamed, and the
directory fsynced: a crash never leaves a half file under a final name (agent/video/store.py
removes the temporary leftovers when it opens).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import re
import sqlite3
import threading
from pathlib import Path

from agent.errors import StoreError
from agent.video.segmenter import Segment

TMP_SUFFIX = ".tmp"
SEGMENT_SUFFIX = ".ts"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def file_name(segment: Segment) -> str:
    """Sorts by camera then time, and is the same for the same segment (see put's race)."""
    stamp = datetime.datetime.fromtimestamp(segment.start, datetime.UTC)
    camera = _UNSAFE.sub("_", segment.camera_id)
    when = stamp.strftime("%Y%m%dT%H%M%S.%f")[:-3]
    return f"{camera}_{when}Z_{segment.sha256[:16]}{SEGMENT_SUFFIX}"


def write_atomically(directory: Path, name: str, data: bytes) -> None:
    """``data`` as ``directory / name``, whole or not at all; an OSError leaves no temp file."""
    final = directory / name
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ADVICE = {
    errno.ENOSPC: "the disk is full; free space or lower storage.max_gb / recording.max_gb",
    errno.EDQUOT: "the disk quota is used up; raise it or lower storage.max_gb",
    errno.EROFS: "the file system is read-only (an SD card does this when it is failing); "
    "check `dmesg` and replace the card",
    errno.EACCES: "permission denied; the agent's user must own the storage directory",
}


def translate(exc: OSError | sqlite3.Error, action: str) -> StoreError:
    """What failed while the store did ``action``, and what to do about it."""
    if isinstance(exc, OSError):
        advice = _ADVICE.get(exc.errno or 0, exc.strerror or str(exc))
        err = StoreError(exc.errno or 0, f"cannot {action}: {advice}")
    else:
        text = str(exc)
        full = "full" in text
        code = errno.ENOSPC if full else errno.EROFS if "readonly" in text else errno.EIO
        err = StoreError(code, f"cannot {action}: {_ADVICE.get(code, text)}")
    return err
