"""The one way the agent opens a SQLite file: WAL, a chosen sync level, a corrupt file put aside.

The outbox, the command replay cache, the segment indexes and the centre's ledger each prefer
losing a corrupt file to not starting at all (an agent that cannot start loses every future
alarm; a receiver that cannot start loses every school's), so a file that is not a sound
database of its kind is moved aside with its WAL and shared-memory files, for forensics, and a
clean one is started, with one ERROR line saying why and what was lost.

Only damage is put aside. A file that is busy (a second agent on the same storage), read-only,
on a full disk or not permitted is left where it is and the open fails: moving it would throw
away a sound file, or steal it from the process using it.

Choices, each deliberate:
- WAL: readers never block the writer, and a commit is one append and one fsync.
- ``synchronous`` is the caller's (:class:`Sync`): FULL where a commit must survive power
  loss (an alarm, a nonce), NORMAL where a lost commit only causes a resend. :func:`relaxed`
  lowers it for one transaction.
- ``quick_check`` at open: a torn page is found now, not at the first alarm's commit.
- A busy timeout, so two threads or processes sharing a file wait for each other briefly.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.errors import AgentError

log = logging.getLogger("agent.db")

BUSY_TIMEOUT_S = 5.0

# Primary result codes that say something about the file's surroundings, not its content.
_NOT_DAMAGE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_AUTH,
    }
)


class Sync(enum.StrEnum):
    """SQLite's ``synchronous`` levels that the agent uses."""

    FULL = "FULL"  # each commit fsyncs the WAL: it survives power loss
    NORMAL = "NORMAL"  # the WAL is synced at checkpoints: the last commits may be lost


@dataclass(frozen=True, slots=True)
class Opened:
    conn: sqlite3.Connection
    quarantined: Path | None = None  # where a corrupt file was moved, if one was


def open_db(
    path: Path,
    setup: Callable[[sqlite3.Connection], None],
    *,
    what: str,
    sync: Sync,
    lost: str,
    autocommit: bool = False,
    private: bool = False,
    quarantine: bool = True,
    error: Callable[[str], AgentError] = AgentError,
    busy_timeout_s: float = BUSY_TIMEOUT_S,
) -> Opened:
    """Open (or create) ``path`` and run ``setup`` on it: create the tables, migrate, check.

    ``setup`` raises ``sqlite3.DatabaseError`` for a file that is not of its kind; a schema
    statement failing on a stranger's table does so by itself. ``what`` names the file for a
    technician ("outbox"), ``lost`` says what putting it aside loses. ``autocommit`` leaves
    transactions to the caller's explicit BEGIN; otherwise Python opens one before each write.
    ``private`` makes the file 0600. Without ``quarantine`` (a reader beside the process that
    owns the file) a corrupt file is left in place and the open fails. Failures raise
    ``error`` (the caller's exception type) with a message for a technician.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Opened(
            _connect(
                path, setup, sync, autocommit, private, busy_timeout_s, refuse_empty=quarantine
            )
        )
    except sqlite3.DatabaseError as exc:
        damaged = _is_damage(exc)
        if not damaged or not quarantine:
            raise error(_refusal(what, path, exc, damaged)) from exc
        reason = exc
    except OSError as exc:
        raise error(
            f"cannot open the {what} {path}: {exc}; check that {path.parent} is writable"
        ) from exc
    try:
        aside = move_aside(path)
    except OSError as exc:
        raise error(
            f"the {what} {path} is corrupt ({reason}) and cannot be moved aside: {exc}"
        ) from exc
    log.error(
        "%s %s is corrupt (%s); moved it to %s and started a clean one: %s",
        what,
        path,
        reason,
        aside,
        lost,
    )
    try:
        return Opened(
            _connect(path, setup, sync, autocommit, private, busy_timeout_s, refuse_empty=True),
            aside,
        )
    except (sqlite3.Error, OSError) as exc:
        raise error(
            f"cannot create a new {what} {path}: {exc}; check that {path.parent} is "
            "writable and not full"
        ) from exc


def _connect(
    path: Path,
    setup: Callable[[sqlite3.Connection], None],
    sync: Sync,
    autocommit: bool,
    private: bool,
    busy_timeout_s: float,
    refuse_empty: bool,
) -> sqlite3.Connection:
    """``refuse_empty``: the file's owner takes an empty file for a truncated one (SQLite would
    silently start it anew, and the loss would go unreported). A reader beside the owner must
    not: an empty file is also what the owner's file looks like while it is being created."""
    if refuse_empty and path.exists() and path.stat().st_size == 0:
        raise sqlite3.DatabaseError("the file is empty (truncated)")
    conn = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={Sync(sync)}")
        (check,) = conn.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        setup(conn)
        if private:
            os.chmod(path, 0o600)
        conn.isolation_level = None if autocommit else "DEFERRED"
    except BaseException:
        conn.close()
        raise
    return conn


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Raised for what the file holds, not for where it is: ours to put aside."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is None or code & 0xFF not in _NOT_DAMAGE


def _refusal(what: str, path: Path, exc: sqlite3.DatabaseError, damaged: bool) -> str:
    if damaged:
        return (
            f"the {what} {path} is corrupt ({exc}); it was left in place for the process "
            "that owns it, which moves it aside when it starts"
        )
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return (
            f"the {what} {path} is in use by another process ({exc}): is a second copy "
            "running on the same storage?"
        )
    return (
        f"cannot open the {what} {path} ({exc}): check that {path.parent} is writable and not full"
    )


@contextlib.contextmanager
def relaxed(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction at ``synchronous=NORMAL``: for bookkeeping whose loss on power failure
    only causes a resend, so it never makes an alarm's commit wait behind its fsync. The next
    FULL commit makes it durable anyway. The caller holds the connection's lock."""
    (before,) = conn.execute("PRAGMA synchronous").fetchone()
    conn.execute(f"PRAGMA synchronous={Sync.NORMAL}")
    try:
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):  # a failing disk: the next open sets it again
            conn.execute(f"PRAGMA synchronous={int(before)}")


def move_aside(path: Path) -> Path:
    """Rename ``path`` and its -wal/-shm to ``*.corrupt-<time>``; returns the new name."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S.%f")  # two in one second keep both
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{aside}{suffix}"))
    return aside
