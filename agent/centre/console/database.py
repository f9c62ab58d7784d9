"""The console's own database: users, sessions, incidents, commands and the audit log.

It is not the receiver's store: the receiver parses what boxes send, and a flaw there must not
let anyone rewrite who acknowledged what. SQLite (WAL, ``synchronous=FULL``: an acknowledgement
or an audit entry is on disk before the officer is told it happened) for one centre machine;
PostgreSQL (pgdatabase.py) for several consoles. Both take ``?`` parameters and the same SQL;
:func:`open_database` chooses.

Threads: the HTTP threads, the feed and the console's MQTT link share one connection. One lock,
held for one short transaction at a time, never while calling out of this module. A write
transaction excludes every other writer (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's advisory
lock), so the audit chain is appended one entry after another, whichever console writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from agent.errors import AgentError

VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('operator', 'supervisor')),
    password   TEXT NOT NULL,               -- scrypt$N$r$p$salt$hash (passwords.py)
    created_at TEXT NOT NULL,
    disabled   INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,            -- sha256 of the cookie: the table alone logs no one in
    officer    TEXT NOT NULL REFERENCES users (name),
    csrf       TEXT NOT NULL,
    created    REAL NOT NULL,
    seen       REAL NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS logins (          -- failed attempts, for throttling
    officer TEXT NOT NULL,
    at      REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS logins_officer ON logins (officer, at);
CREATE TABLE IF NOT EXISTS incidents (
    site_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    acked_by     TEXT NOT NULL,
    acked_at     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    command_id   TEXT NOT NULL,             -- the signed ack sent to the box
    closed_by    TEXT,
    closed_at    TEXT,
    note         TEXT,
    PRIMARY KEY (site_id, event_id)
) STRICT;
CREATE TABLE IF NOT EXISTS commands (
    id        TEXT PRIMARY KEY,
    site_id   TEXT NOT NULL,
    name      TEXT NOT NULL,
    args      TEXT NOT NULL,                -- JSON
    officer   TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    result_at TEXT,                         -- the box's first result (a later copy is a replay)
    ok        INTEGER,
    reason    TEXT,
    data      TEXT                          -- JSON, as the box sent it (bounded, checked)
) STRICT;
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    site_id TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL,                  -- JSON object
    prev    TEXT NOT NULL,
    hash    TEXT NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
"""


class Database(Protocol):
    """``tx()`` is one write transaction (its connection's ``execute`` takes ``?``
    parameters); ``rows()`` and ``row()`` read. Any thread."""

    def tx(self) -> AbstractContextManager[Any]: ...
    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...
    def row(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None: ...
    def close(self) -> None: ...
    def changes(self) -> list[tuple[str, str]]:
        """(site, event) of alarms whose incident another console changed; feed thread."""


def open_database(data: Path, url: str | None = None) -> Database:
    """The console's SQLite in ``data``, or PostgreSQL at ``url`` (shared by consoles)."""
    if url is None:
        return SqliteDatabase.open(data)
    from agent.centre.console.pgdatabase import PgDatabase

    return PgDatabase.open(url)


class SqliteDatabase:
    """The console's database in one SQLite file."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # guards _conn: one transaction at a time

    @classmethod
    def open(cls, directory: Path) -> SqliteDatabase:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / "console.db"
        try:
            conn = sqlite3.connect(path, check_same_thread=False, timeout=5, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > VERSION:
                raise AgentError(
                    f"{path} was made by a newer edge-agent (version {version}); upgrade this one"
                )
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";\n"):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {VERSION}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AgentError(f"cannot open the console's database {path}: {exc}") from exc
        path.chmod(0o600)
        return cls(conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def changes(self) -> list[tuple[str, str]]:
        return []  # one console per SQLite file: it publishes its own changes

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE): committed on success."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def row(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            found: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
            return found
