"""The centre's ledger: every alarm once, each site's online state, and any gap in a site's seq.

SQLite (WAL, synchronous=FULL) in the receiver's store directory, shared by the receiver and the
``edge-agent central`` commands. The ledger is how the centre knows it has missed something: a
box numbers its alarms 1, 2, 3 … across restarts, so a jump in ``seq`` is an alarm that has not
arrived (yet: a resend may fill it, and then the gap closes).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.delivery.protocol import Alarm, rfc3339

log = logging.getLogger("agent.ledger")

MAX_GAP_ROWS = 1000  # a box whose outbox was reset jumps; do not list a million "missing" seqs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    event_id    TEXT PRIMARY KEY,
    site_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    button_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    test        INTEGER NOT NULL,
    pressed_at  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarms_site_seq ON alarms (site_id, seq);
CREATE TABLE IF NOT EXISTS sites (
    site_id    TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    status     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    site_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    detected_at TEXT NOT NULL,
    PRIMARY KEY (site_id, seq)
);
CREATE TABLE IF NOT EXISTS clips (
    event_id   TEXT NOT NULL,
    camera_id  TEXT NOT NULL,
    site_id    TEXT NOT NULL,
    path       TEXT NOT NULL,
    segments   INTEGER NOT NULL,
    written_at TEXT NOT NULL,
    verified   INTEGER NOT NULL,            -- the hash chain and the box's signature held
    problem    TEXT NOT NULL,               -- why not, for the operator
    PRIMARY KEY (event_id, camera_id)
);
"""


@dataclass(frozen=True, slots=True)
class Stored:
    new: bool
    gap_opened: tuple[int, int] | None = None  # first and last missing seq
    gap_closed: bool = False


class Ledger:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # the receiver's paho thread and CLI readers

    @classmethod
    def open(cls, directory: Path) -> Ledger:
        directory.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(directory / "centre.db", check_same_thread=False, timeout=5)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        return cls(conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add_alarm(self, alarm: Alarm, payload: bytes, now: float | None = None) -> Stored:
        """Store an alarm once; find the gap it opens in its site's seq, or the gap it fills."""
        received = rfc3339(now if now is not None else time.time())
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO alarms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (alarm.event_id, alarm.site_id, alarm.seq, alarm.button_id, alarm.kind,
                 int(alarm.test), alarm.pressed_at, received, payload.decode()))
            if cur.rowcount == 0:
                return Stored(new=False)
            closed = self._conn.execute("DELETE FROM gaps WHERE site_id = ? AND seq = ?",
                                        (alarm.site_id, alarm.seq)).rowcount > 0
            (top,) = self._conn.execute(
                "SELECT MAX(seq) FROM alarms WHERE site_id = ? AND event_id != ?",
                (alarm.site_id, alarm.event_id)).fetchone()
            if top is None or alarm.seq <= top + 1:
                if top is not None and alarm.seq <= top and not closed:
                    log.warning("site %s: seq %d after %d: was the box's outbox reset?",
                                alarm.site_id, alarm.seq, top)
                return Stored(new=True, gap_closed=closed)
            first, last = top + 1, alarm.seq - 1
            self._conn.executemany(
                "INSERT OR IGNORE INTO gaps VALUES (?, ?, ?)",
                [(alarm.site_id, s, received) for s in range(max(first, last - MAX_GAP_ROWS + 1),
                                                              last + 1)])
            return Stored(new=True, gap_opened=(first, last), gap_closed=closed)

    def site_status(self, site_id: str, status: dict[str, Any], now: float | None = None) -> bool:
        """Record a site's retained status; True when its state changed."""
        state = str(status.get("state", "unknown"))
        at = rfc3339(now if now is not None else time.time())
        with self._lock, self._conn:
            row = self._conn.execute("SELECT state FROM sites WHERE site_id = ?",
                                     (site_id,)).fetchone()
            changed = row is None or row[0] != state
            if changed:
                self._conn.execute("INSERT OR REPLACE INTO sites VALUES (?, ?, ?, ?)",
                                   (site_id, state, at, json.dumps(status)))
            else:
                self._conn.execute("UPDATE sites SET status = ? WHERE site_id = ?",
                                   (json.dumps(status), site_id))
        return changed

    def add_clip(self, site_id: str, event_id: str, camera_id: str, path: Path,
                 segments: int, problem: str) -> None:
        with self._lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO clips VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (event_id, camera_id, site_id, str(path), segments,
                                rfc3339(time.time()), int(not problem), problem))

    def clip_problem(self, event_id: str, camera_id: str) -> str | None:
        """"" for a verified clip, the reason for one that failed, None if there is none."""
        with self._lock:
            row = self._conn.execute(
                "SELECT problem FROM clips WHERE event_id = ? AND camera_id = ?",
                (event_id, camera_id)).fetchone()
        return None if row is None else str(row[0])

    def has_clip(self, event_id: str, camera_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM clips WHERE event_id = ? AND camera_id = ?",
                                      (event_id, camera_id)).fetchone() is not None

    def site_of(self, event_id: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT site_id FROM alarms WHERE event_id = ?",
                                     (event_id,)).fetchone()
        return str(row[0]) if row else None

    def sites(self) -> list[tuple[str, str, str]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT site_id, state, changed_at FROM sites ORDER BY site_id").fetchall()
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def gaps(self) -> dict[str, list[int]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT site_id, seq FROM gaps ORDER BY site_id, seq").fetchall()
        out: dict[str, list[int]] = {}
        for site, seq in rows:
            out.setdefault(str(site), []).append(int(seq))
        return out

    def alarms(self, site_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT payload FROM alarms" + (" WHERE site_id = ?" if site_id else "")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY site_id, seq",
                                      (site_id,) if site_id else ()).fetchall()
        return [json.loads(r[0]) for r in rows]
