"""The centre's ledger: every alarm once, each site's state, gaps in its seq, clips, reports.

SQLite (WAL, synchronous=FULL, opened by agent/db.py) in the receiver's store directory, shared
by the receiver and the ``edge-agent central`` commands. The ledger is how the centre knows it
has missed something: a box numbers its alarms 1, 2, 3 … across restarts, so a jump in ``seq``
is an alarm that has not arrived (yet: a resend may fill it, and then the gap closes). A
corrupt ledger is moved aside by the receiver when it starts (every alarm is also in
``alarms.jsonl``); the commands beside it only report it.

What a hostile box must not be able to do to it (docs/security.md):

- **Poison it.** Tables are STRICT: SQLite refuses a TEXT ``seq`` instead of storing it, which
  once made ``MAX(seq)`` a string and every later alarm of the site fail. The receiver's schema
  (agent/delivery/protocol.py) refuses it first; STRICT is the second wall.
- **Reach another school's records.** Alarms are keyed by (site, event), clips by (site, event,
  camera): a box that learns another school's event id only makes a record of its own.
- **Replace evidence.** Rows are inserted, never replaced. A clip row keeps the sha256 of every
  segment, so a later, different copy of the same clip is recognised (and refused) even after
  the receiver restarted.

Version 1 of this file (keys without the site, plain tables) is migrated once, at open: valid
rows are copied, the old tables are kept as ``legacy_*`` (nothing is deleted), and rows with a
wrong type are left there and counted in the log.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.centre.ledgerrecords import Row, Statement, Stored, alarm_row, stamp
from agent.centre.ledgerstore import LedgerStore
from agent.db import Sync, open_db, relaxed
from agent.delivery.protocol import Alarm
from agent.errors import AgentError

log = logging.getLogger("agent.ledger")

VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    site_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    button_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    test        INTEGER NOT NULL,           -- the centre's decision: a walk test, not dispatched
    test_claimed INTEGER NOT NULL,          -- the box's flag (differs when not announced)
    pressed_at  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    payload     TEXT NOT NULL,              -- exactly as the box sent it
    PRIMARY KEY (site_id, event_id)
) STRICT;
CREATE INDEX IF NOT EXISTS alarms_site_seq ON alarms (site_id, seq);
CREATE INDEX IF NOT EXISTS alarms_event ON alarms (event_id);
CREATE TABLE IF NOT EXISTS sites (
    site_id    TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    status     TEXT NOT NULL,
    test_until TEXT                         -- the walk test the site announced, box clock
) STRICT;
CREATE TABLE IF NOT EXISTS gaps (
    site_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    detected_at TEXT NOT NULL,
    PRIMARY KEY (site_id, seq)
) STRICT;
CREATE TABLE IF NOT EXISTS clips (
    site_id    TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    camera_id  TEXT NOT NULL,
    path       TEXT NOT NULL,
    segments   INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    sha256     TEXT NOT NULL,               -- of the whole file
    manifest   TEXT NOT NULL,               -- JSON list of each segment's sha256
    written_at TEXT NOT NULL,
    verified   INTEGER NOT NULL,            -- the hash chain and the box's signature held
    problem    TEXT NOT NULL,               -- why not, for the operator
    PRIMARY KEY (site_id, event_id, camera_id)
) STRICT;
CREATE TABLE IF NOT EXISTS reports (
    id      INTEGER PRIMARY KEY,
    site_id TEXT NOT NULL,
    at      TEXT NOT NULL,
    what    TEXT NOT NULL,                  -- a fixed word: refused, evicted, over_quota, ...
    detail  TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS reports_site ON reports (site_id, id);
CREATE TABLE IF NOT EXISTS links (
    receiver    TEXT NOT NULL,
    link        TEXT NOT NULL,              -- alarms | video: one MQTT connection each
    up          INTEGER NOT NULL,
    since       TEXT NOT NULL,
    lost_at     TEXT,
    regained_at TEXT,
    outages     INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    PRIMARY KEY (receiver, link)
) STRICT;
"""

# From version 1: what is copied, and only where every value has its declared type.
_MIGRATE = {
    "alarms": "INSERT OR IGNORE INTO alarms SELECT site_id, event_id, seq, button_id, kind, "
    "test, test, pressed_at, received_at, payload FROM legacy_alarms WHERE typeof(seq) = 'integer' "
    "AND typeof(test) = 'integer'",
    "sites": "INSERT OR IGNORE INTO sites SELECT site_id, state, changed_at, status, NULL "
    "FROM legacy_sites",
    "gaps": "INSERT OR IGNORE INTO gaps SELECT * FROM legacy_gaps WHERE typeof(seq) = 'integer'",
    "clips": "INSERT OR IGNORE INTO clips SELECT site_id, event_id, camera_id, path, segments, "
    "0, '', '[]', written_at, verified, problem FROM legacy_clips "
    "WHERE typeof(segments) = 'integer'",
}


class Ledger(LedgerStore):
    """The ledger in the receiver's store (agent/centre/ledgerstore.py has its methods)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._conn = conn  # guarded by _lock: the receiver's threads and CLI readers share it

    @classmethod
    def open(cls, directory: Path, *, recover: bool = False) -> Ledger:
        """The ledger in ``directory``. Only the receiver, its one writer, passes ``recover``
        to move a corrupt file aside; a command beside it must not pull the file from under
        it, so it fails with the reason instead."""
        opened = open_db(
            directory / "centre.db",
            _setup,
            what="ledger",
            sync=Sync.FULL,
            quarantine=recover,
            lost="the seq gaps, clip records and reports "
            "before now are forgotten; every alarm is still in alarms.jsonl",
        )
        return cls(opened.conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _bookkeeping(self) -> Iterator[sqlite3.Connection]:
        """One transaction without its own fsync (``synchronous=NORMAL``)."""
        with self._lock, relaxed(self._conn), self._conn:
            yield self._conn

    def _rows(self, sql: str, params: Row = ()) -> list[Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _bookkeep(self, *statements: Statement) -> None:
        with self._bookkeeping() as conn:
            for sql, params in statements:
                conn.execute(sql, params)

    # --- alarms ---------------------------------------------------------------------------

    def add_alarms(
        self, alarms: list[tuple[Alarm, bytes, bool]], now: float | None = None
    ) -> list[Stored]:
        received = stamp(now)
        with self._lock, self._conn:
            return [self._add(alarm, payload, test, received) for alarm, payload, test in alarms]

    def _add(self, alarm: Alarm, payload: bytes, test: bool, received: str) -> Stored:
        text = payload.decode()
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO alarms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            alarm_row(alarm, text, test, received),
        )
        if cur.rowcount == 0:
            (first,) = self._conn.execute(
                "SELECT payload FROM alarms WHERE site_id = ? AND event_id = ?",
                (alarm.site_id, alarm.event_id),
            ).fetchone()
            return Stored.duplicate(first, text)
        closed = (
            self._conn.execute(
                "DELETE FROM gaps WHERE site_id = ? AND seq = ?", (alarm.site_id, alarm.seq)
            ).rowcount
            > 0
        )
        (top,) = self._conn.execute(
            "SELECT MAX(seq) FROM alarms WHERE site_id = ? AND event_id != ?",
            (alarm.site_id, alarm.event_id),
        ).fetchone()
        stored = Stored.new_alarm(alarm, top, closed)
        if stored.gap_opened is not None:
            self._conn.executemany(
                "INSERT OR IGNORE INTO gaps VALUES (?, ?, ?)",
                [(alarm.site_id, s, received) for s in stored.missing()],
            )
        return stored

    def known_alarms(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        with self._lock:
            return {
                key
                for key in keys
                if self._conn.execute(
                    "SELECT 1 FROM alarms WHERE site_id = ? AND event_id = ?", key
                ).fetchone()
            }

    def test_windows(self, sites: list[str]) -> dict[str, str]:
        with self._lock:
            rows = [
                self._conn.execute(
                    "SELECT site_id, test_until FROM sites WHERE site_id = ? "
                    "AND test_until IS NOT NULL",
                    (site,),
                ).fetchone()
                for site in sites
            ]
        return {str(row[0]): str(row[1]) for row in rows if row is not None}

    # --- what the two dialects write differently ------------------------------------------

    def _set_site(
        self, site_id: str, state: str, status: str, test_until: str | None, at: str
    ) -> bool:
        with self._bookkeeping() as conn:
            row = conn.execute("SELECT state FROM sites WHERE site_id = ?", (site_id,)).fetchone()
            changed = row is None or row[0] != state
            if changed:
                conn.execute(
                    "INSERT OR REPLACE INTO sites VALUES (?, ?, ?, ?, ?)",
                    (site_id, state, at, status, test_until),
                )
            else:
                conn.execute(
                    "UPDATE sites SET status = ?, test_until = ? WHERE site_id = ?",
                    (status, test_until, site_id),
                )
        return changed

    def _insert_clip(self, row: Row) -> bool:
        with self._lock, self._conn:
            return (
                self._conn.execute(
                    "INSERT OR IGNORE INTO clips VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row
                ).rowcount
                == 1
            )

    def _upsert_link(self, params: dict[str, Any]) -> None:
        with self._bookkeeping() as conn:
            conn.execute(
                "INSERT INTO links VALUES (:receiver, :link, :up, :at, :lost, NULL, 0, :error) "
                "ON CONFLICT DO UPDATE SET up = :up, since = :at, last_error = :error, "
                "lost_at = CASE WHEN up AND NOT :up AND :outage THEN :at ELSE lost_at END, "
                "regained_at = CASE WHEN :up AND NOT up THEN :at ELSE regained_at END, "
                "outages = outages + (up AND NOT :up AND :outage)",
                params,
            )


def _setup(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] != VERSION:
        _create(conn)  # else read only: `central status` never blocks the receiver


def _create(conn: sqlite3.Connection) -> None:
    """Make the tables, or migrate a version 1 file, once, even if two processes open it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > VERSION:
            raise AgentError(
                f"the ledger is version {version}, made by a newer edge-agent "
                f"than this one (version {VERSION}): upgrade this one"
            )
        if version < VERSION and _has_table(conn, "alarms"):
            _migrate(conn)
        for statement in _SCHEMA.split(";")[:-1]:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        is not None
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Version 1 to 2, inside the caller's transaction: the old tables are kept as legacy_*."""
    tables = [table for table in _MIGRATE if _has_table(conn, table)]
    for table in tables:
        conn.execute(f"ALTER TABLE {table} RENAME TO legacy_{table}")
    conn.execute("DROP INDEX IF EXISTS alarms_site_seq")  # an index, not data: made anew
    for statement in _SCHEMA.split(";")[:-1]:
        conn.execute(statement)
    for table in tables:
        conn.execute(_MIGRATE[table])
    (old,) = conn.execute("SELECT COUNT(*) FROM legacy_alarms").fetchone()
    (kept,) = conn.execute("SELECT COUNT(*) FROM alarms").fetchone()
    log.warning(
        "ledger migrated to version %d: %d of %d alarms copied; the rest had a wrong "
        "type (kept in legacy_alarms)",
        VERSION,
        kept,
        old,
    )
