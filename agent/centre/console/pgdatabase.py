"""The console's database in PostgreSQL, for several consoles (and receivers) of one centre:
the same tables and SQL as database.py, so an officer's acknowledgement, a session and the
audit chain are one whichever console served the request.

Each write transaction first takes one advisory lock (as SQLite's ``BEGIN IMMEDIATE`` excludes
other writers): officers' actions are few, and the audit chain must be appended one entry after
another (two consoles reading the same head would fork it). UPDATE and DELETE of the audit log
are refused by a trigger, as in SQLite.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from agent.centre.pgledger import connect, connect_with_schema

WRITE_LOCK = "edge_console_write"
CHANNEL = "edge_console"  # site/event of an incident changed by any console

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ('operator', 'supervisor')),
    password TEXT NOT NULL, created_at TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, officer TEXT NOT NULL REFERENCES users (name),
    csrf TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, seen DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS logins (officer TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS logins_officer ON logins (officer, at);
CREATE TABLE IF NOT EXISTS incidents (
    site_id TEXT NOT NULL, event_id TEXT NOT NULL, acked_by TEXT NOT NULL,
    acked_at TEXT NOT NULL, reason TEXT NOT NULL, command_id TEXT NOT NULL, closed_by TEXT,
    closed_at TEXT, note TEXT, PRIMARY KEY (site_id, event_id)
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, site_id TEXT NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL,
    officer TEXT NOT NULL, issued_at TEXT NOT NULL, result_at TEXT, ok INTEGER, reason TEXT,
    data TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGINT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    site_id TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE OR REPLACE FUNCTION edge_audit_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION edge_audit_append_only();
CREATE OR REPLACE FUNCTION edge_incident_notify() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('edge_console', NEW.site_id || '/' || NEW.event_id); RETURN NULL; END
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER incidents_notify AFTER INSERT OR UPDATE ON incidents
    FOR EACH ROW EXECUTE FUNCTION edge_incident_notify();
CREATE OR REPLACE FUNCTION edge_result_notify() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('edge_console', i.site_id || '/' || i.event_id) FROM incidents i
    WHERE i.command_id = NEW.id; RETURN NULL; END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER commands_notify AFTER UPDATE ON commands
    FOR EACH ROW EXECUTE FUNCTION edge_result_notify()
"""


class _Tx:
    """A transaction's connection that takes ``?`` parameters, as sqlite3's does."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(sql.replace("?", "%s"), params)


class PgDatabase:
    def __init__(self, conn: psycopg.Connection[Any], listener: psycopg.Connection[Any]) -> None:
        self._conn, self._listener = conn, listener
        self._lock = threading.Lock()  # guards _conn: one transaction at a time

    @classmethod
    def open(cls, url: str) -> PgDatabase:
        conn = connect_with_schema(url, SCHEMA, WRITE_LOCK)
        listener = connect(url)
        listener.execute(f"LISTEN {CHANNEL}")
        return cls(conn, listener)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._listener.close()

    def changes(self) -> list[tuple[str, str]]:
        """The alarms whose incident any console changed since the last call (the feed's
        thread only): another console's acknowledgement or box result, shown here too."""
        keys = []
        for note in self._listener.notifies(timeout=0, stop_after=1000):
            site, _, event = note.payload.partition("/")
            keys.append((site, event))
        return keys

    @contextlib.contextmanager
    def tx(self) -> Iterator[_Tx]:
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (WRITE_LOCK,))
            yield _Tx(self._conn)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql.replace("?", "%s"), params).fetchall()

    def row(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None
