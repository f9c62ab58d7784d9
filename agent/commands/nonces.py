"""The replay cache: every accepted command's nonce and id, durably, and a horizon.

Its invariant: every accepted command whose ``expires_at`` is later than the cache's *horizon*
is in the cache. Whatever the cache forgets (pruning, the size cap) raises the horizon past
it, and a command expiring at or before the horizon is refused. So replay protection does not
depend on the wall clock, which matters on a Pi: it has no RTC and may run far off until NTP
syncs (docs/commands.md, "Replay cache").
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from agent.db import Sync, open_db
from agent.errors import AgentError

log = logging.getLogger("agent.commands")

T = TypeVar("T")

DEFAULT_MAX_NONCES: Final = 100_000


class NonceStoreError(AgentError, OSError):
    """The replay cache could not be opened or written."""


_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    nonce      TEXT    NOT NULL UNIQUE,   -- both unique: a replay is refused on either
    command_id TEXT    NOT NULL UNIQUE,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_by_expiry ON seen (expires_ms);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- horizon_ms: the latest expiry of any command this cache forgot. A command that expires at or
-- before it may have been accepted and forgotten, so it is refused as a possible replay.
INSERT OR IGNORE INTO meta (name, value) VALUES ('horizon_ms', 0);
"""


class NonceStore:
    """The persisted (nonce, id) cache. Open with :meth:`open`; the constructor does no I/O.

    SQLite choices: WAL with ``synchronous=FULL``, because a nonce must be on disk before its
    command runs, or a power cut between the two would let a replay through after the reboot.
    Each check-and-add is one ``BEGIN IMMEDIATE`` transaction, atomic even across processes.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, max_rows: int = DEFAULT_MAX_NONCES
    ) -> None:
        self._conn = conn
        self.path = path
        self.max_rows = max_rows
        # Guards _conn: sqlite3 objects are not safe to use concurrently. Held for one short
        # transaction at a time and never while calling out of this class.
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, max_rows: int = DEFAULT_MAX_NONCES) -> NonceStore:
        """Open or create the cache; a corrupt file is moved aside and a clean one started.

        A clean cache forgets past nonces: while the clock is synced, expiry still refuses old
        commands; the window is the lifetime of commands captured recently (docs/commands.md).
        """
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        opened = open_db(
            path,
            _setup,
            what="replay cache",
            sync=Sync.FULL,
            autocommit=True,
            private=True,
            error=NonceStoreError,
            lost="commands captured in the last hour could be replayed once",
        )
        return cls(opened.conn, path, max_rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @property
    def horizon(self) -> float:
        """Commands expiring at or before this moment (epoch seconds) are refused."""
        with self._lock:
            try:
                return _horizon_ms(self._conn) / 1000
            except sqlite3.Error as exc:
                raise NonceStoreError(f"replay cache read failed: {exc}") from exc

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT COUNT(*) FROM seen").fetchone()
        return int(count)

    def seen_or_add(
        self, nonce: str, command_id: str, expires_at: float, *, forget_before: float | None = None
    ) -> bool:
        """True when the nonce or the id was seen, or the command expires at or before the
        horizon; otherwise remember it durably and return False. ``forget_before`` prunes in the
        same transaction (one fsync): pass it only from a trustworthy clock."""
        expires_ms = round(expires_at * 1000)

        def tx(conn: sqlite3.Connection) -> bool:
            if forget_before is not None:
                self._forget(conn, "expires_ms < ?", (round(forget_before * 1000),))
            if expires_ms <= _horizon_ms(conn):
                return True
            cur = conn.execute(
                "INSERT OR IGNORE INTO seen (nonce, command_id, expires_ms) VALUES (?, ?, ?)",
                (nonce, command_id, expires_ms),
            )
            if cur.rowcount != 1:
                return True
            # COUNT(*) on every add: commands come from people, a few an hour, so a scan of at
            # most max_rows index entries is cheap, and simpler than keeping a counter right.
            (count,) = conn.execute("SELECT COUNT(*) FROM seen").fetchone()
            if count > self.max_rows:
                dropped = self._forget(
                    conn,
                    "rowid IN (SELECT rowid FROM seen ORDER BY expires_ms, rowid LIMIT ?)",
                    (count - self.max_rows,),
                )
                log.warning("replay cache full: forgot the %d commands expiring first", dropped)
            return False

        return self._write(tx)

    def prune(self, before: float) -> int:
        """Forget commands that expired before ``before`` (from a trustworthy clock)."""
        return self._write(
            lambda conn: self._forget(conn, "expires_ms < ?", (round(before * 1000),))
        )

    @staticmethod
    def _forget(conn: sqlite3.Connection, where: str, params: tuple[int, ...]) -> int:
        """Delete rows and raise the horizon to the latest expiry deleted, in the caller's tx."""
        count, top = conn.execute(
            f"SELECT COUNT(*), MAX(expires_ms) FROM seen WHERE {where}", params
        ).fetchone()
        if not count:
            return 0
        conn.execute(f"DELETE FROM seen WHERE {where}", params)
        conn.execute("UPDATE meta SET value = MAX(value, ?) WHERE name = 'horizon_ms'", (top,))
        return int(count)

    def _write(self, tx: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = tx(self._conn)
                    self._conn.execute("COMMIT")  # the WAL fsync: durable from here
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise NonceStoreError(
                    f"replay cache write failed ({exc}); is {self.path.parent} full or read-only?"
                ) from exc
        return result


def _horizon_ms(conn: sqlite3.Connection) -> int:
    (value,) = conn.execute("SELECT value FROM meta WHERE name = 'horizon_ms'").fetchone()
    return int(value)


def _setup(conn: sqlite3.Connection) -> None:
    conn.executescript(_STORE_SCHEMA)
    try:  # a file from something else fails here, not at the first command
        _horizon_ms(conn)
    except (TypeError, ValueError) as exc:
        raise sqlite3.DatabaseError(f"not a replay cache: {exc}") from exc
