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
  (agent/protocol.py) refuses it first; STRICT is the second wall.
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
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import rfc3339
from agent.db import Sync, open_db, relaxed
from agent.delivery.protocol import Alarm
from agent.errors import AgentError

log = logging.getLogger("agent.ledger")

MAX_GAP_ROWS = 1000  # a box whose outbox was reset jumps; do not list a million "missing" seqs
REPORTS_PER_SITE = 200  # the newest reports of each site are kept; a hostile box cannot fill it
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


@dataclass(frozen=True, slots=True)
class Stored:
    new: bool
    gap_opened: tuple[int, int] | None = None  # first and last missing seq
    gap_closed: bool = False
    differs: bool = False  # a duplicate whose content is not the stored one's


@dataclass(frozen=True, slots=True)
class ClipRecord:
    path: str
    sha256: str
    manifest: tuple[str, ...]  # each segment's sha256, in order ("" for a version 1 row)
    problem: str


@dataclass(frozen=True, slots=True)
class Report:
    site_id: str
    at: str
    what: str
    detail: str


@dataclass(frozen=True, slots=True)
class LinkState:
    receiver: str
    link: str
    up: bool
    since: str
    lost_at: str | None
    regained_at: str | None
    outages: int
    last_error: str


def _at(now: float | None) -> str:
    return rfc3339(now if now is not None else time.time())


class Ledger:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # Guards _conn: the receiver's threads (alarms, video, links) and CLI readers share it.
        # Held for one short transaction at a time and never while calling out of this class.
        self._lock = threading.Lock()

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
        """One transaction without its own fsync (``synchronous=NORMAL``): for what is only
        shown or soon sent again (site states, reports, the links), so a box that floods valid
        statuses costs the alarm thread no disk flush. The next alarm's commit makes it durable.
        """
        with self._lock, relaxed(self._conn), self._conn:
            yield self._conn

    # --- alarms ---------------------------------------------------------------------------

    def add_alarm(
        self, alarm: Alarm, payload: bytes, test: bool, now: float | None = None
    ) -> Stored:
        """Store an alarm once per (site, event), with the centre's ``test`` decision; find
        the gap it opens in its site's seq, or the gap it fills."""
        return self.add_alarms([(alarm, payload, test)], now)[0]

    def add_alarms(
        self, alarms: list[tuple[Alarm, bytes, bool]], now: float | None = None
    ) -> list[Stored]:
        """:meth:`add_alarm` for alarms that arrived together, in one transaction: one fsync
        for all of them (group commit: agent/centre/receiver.py)."""
        received = _at(now)
        with self._lock, self._conn:
            return [self._add(alarm, payload, test, received) for alarm, payload, test in alarms]

    def _add(self, alarm: Alarm, payload: bytes, test: bool, received: str) -> Stored:
        text = payload.decode()
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO alarms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alarm.site_id,
                alarm.event_id,
                alarm.seq,
                alarm.button_id,
                alarm.kind,
                int(test),
                int(alarm.test),
                alarm.pressed_at,
                received,
                text,
            ),
        )
        if cur.rowcount == 0:
            (first,) = self._conn.execute(
                "SELECT payload FROM alarms WHERE site_id = ? AND event_id = ?",
                (alarm.site_id, alarm.event_id),
            ).fetchone()
            return Stored(new=False, differs=first != text)
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
        if top is None or alarm.seq <= top + 1:
            if top is not None and alarm.seq <= top and not closed:
                log.warning(
                    "site %s: seq %d after %d: was the box's outbox reset?",
                    alarm.site_id,
                    alarm.seq,
                    top,
                )
            return Stored(new=True, gap_closed=closed)
        first_missing, last = top + 1, alarm.seq - 1
        self._conn.executemany(
            "INSERT OR IGNORE INTO gaps VALUES (?, ?, ?)",
            [
                (alarm.site_id, s, received)
                for s in range(max(first_missing, last - MAX_GAP_ROWS + 1), last + 1)
            ],
        )
        return Stored(new=True, gap_opened=(first_missing, last), gap_closed=closed)

    def known_alarms(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (site, event) are stored already: one call for a group (the
        PostgreSQL ledger answers it in one round trip)."""
        with self._lock:
            return {
                key
                for key in keys
                if self._conn.execute(
                    "SELECT 1 FROM alarms WHERE site_id = ? AND event_id = ?", key
                ).fetchone()
            }

    def sites_of(self, event_id: str) -> list[str]:
        """Every site that has an alarm with this event id (one, unless a box copied it)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT site_id FROM alarms WHERE event_id = ? ORDER BY site_id", (event_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def received(self) -> dict[tuple[str, str], str]:
        """When the centre stored each alarm: (site, event id) -> received_at."""
        with self._lock:
            rows = self._conn.execute("SELECT site_id, event_id, received_at FROM alarms")
            return {(str(a), str(b)): str(c) for a, b, c in rows.fetchall()}

    def alarms(self, site_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT payload FROM alarms" + (" WHERE site_id = ?" if site_id else "")
        with self._lock:
            rows = self._conn.execute(
                sql + " ORDER BY site_id, seq", (site_id,) if site_id else ()
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- sites ----------------------------------------------------------------------------

    def site_status(
        self,
        site_id: str,
        state: str,
        status: str,
        test_until: str | None,
        now: float | None = None,
    ) -> bool:
        """Record a site's retained status and announced walk test; True when its state
        changed."""
        at = _at(now)
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

    def test_windows(self, sites: list[str]) -> dict[str, str]:
        """The end of the walk test each site announced last (its box's clock), for the sites
        that announced one."""
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

    def sites(self) -> list[tuple[str, str, str]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT site_id, state, changed_at FROM sites ORDER BY site_id"
            ).fetchall()
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def gaps(self) -> dict[str, list[int]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT site_id, seq FROM gaps ORDER BY site_id, seq"
            ).fetchall()
        out: dict[str, list[int]] = {}
        for site, seq in rows:
            out.setdefault(str(site), []).append(int(seq))
        return out

    # --- clips ----------------------------------------------------------------------------

    def add_clip(
        self,
        site_id: str,
        event_id: str,
        camera_id: str,
        path: Path,
        size: int,
        sha256: str,
        manifest: list[str],
        problem: str,
    ) -> bool:
        """Record a written clip; False (and nothing changed) if one is already recorded."""
        with self._lock, self._conn:
            return (
                self._conn.execute(
                    "INSERT OR IGNORE INTO clips VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        site_id,
                        event_id,
                        camera_id,
                        str(path),
                        len(manifest),
                        size,
                        sha256,
                        json.dumps(manifest),
                        _at(None),
                        int(not problem),
                        problem,
                    ),
                ).rowcount
                == 1
            )

    def clip(self, site_id: str, event_id: str, camera_id: str) -> ClipRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT path, sha256, manifest, problem FROM clips WHERE site_id = ? AND "
                "event_id = ? AND camera_id = ?",
                (site_id, event_id, camera_id),
            ).fetchone()
        if row is None:
            return None
        return ClipRecord(str(row[0]), str(row[1]), tuple(json.loads(row[2])), str(row[3]))

    def clip_problem(self, site_id: str, event_id: str, camera_id: str) -> str | None:
        """ "" for a verified clip, the reason for one that failed, None if there is none."""
        record = self.clip(site_id, event_id, camera_id)
        return None if record is None else record.problem

    # --- what the centre noticed ----------------------------------------------------------

    def report(self, site_id: str, what: str, detail: str, now: float | None = None) -> None:
        """Record something the operator must see about a site; its newest reports are kept."""
        with self._bookkeeping() as conn:
            conn.execute(
                "INSERT INTO reports (site_id, at, what, detail) VALUES (?, ?, ?, ?)",
                (site_id, _at(now), what, detail),
            )
            conn.execute(
                "DELETE FROM reports WHERE site_id = ? AND id <= (SELECT id FROM reports "
                "WHERE site_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (site_id, site_id, REPORTS_PER_SITE),
            )

    def reports(self, site_id: str | None = None, newest: int = 50) -> list[Report]:
        """The newest reports (of one site), oldest first."""
        sql = "SELECT site_id, at, what, detail FROM reports"
        with self._lock:
            rows = self._conn.execute(
                sql + (" WHERE site_id = ?" if site_id else "") + " ORDER BY id DESC LIMIT ?",
                (site_id, newest) if site_id else (newest,),
            ).fetchall()
        return [Report(*map(str, row)) for row in reversed(rows)]

    # --- the receiver's own connections ---------------------------------------------------

    def link_changed(
        self,
        receiver: str,
        link: str,
        up: bool,
        error: str = "",
        now: float | None = None,
        outage: bool = True,
    ) -> None:
        """The receiver lost (``up`` False) or regained one of its broker connections; a clean
        stop is no outage (``outage`` False)."""
        at = _at(now)
        with self._bookkeeping() as conn:
            conn.execute(
                "INSERT INTO links VALUES (:receiver, :link, :up, :at, :lost, NULL, 0, :error) "
                "ON CONFLICT DO UPDATE SET up = :up, since = :at, last_error = :error, "
                "lost_at = CASE WHEN up AND NOT :up AND :outage THEN :at ELSE lost_at END, "
                "regained_at = CASE WHEN :up AND NOT up THEN :at ELSE regained_at END, "
                "outages = outages + (up AND NOT :up AND :outage)",
                {
                    "receiver": receiver,
                    "link": link,
                    "up": int(up),
                    "at": at,
                    "lost": None if up else at,
                    "error": error,
                    "outage": int(outage),
                },
            )

    def links(self) -> list[LinkState]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT receiver, link, up, since, lost_at, regained_at, outages, last_error "
                "FROM links ORDER BY receiver, link"
            ).fetchall()
        return [
            LinkState(str(r[0]), str(r[1]), bool(r[2]), str(r[3]), r[4], r[5], int(r[6]), str(r[7]))
            for r in rows
        ]


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
