"""What the console shows, read from the receiver's ledger and the console's own database.

The ledger (agent/centre/ledger.py) is the receiver's: the console opens it read-only
(``query_only``) and never writes it. Alarms are joined with the console's incidents (who
acknowledged, why, when the box confirmed, who closed it) into the plain dicts the page
renders. Every text in them comes from a box or an officer and is rendered by the page as text,
never as markup.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from agent.centre.console.database import Database
from agent.centre.console.media import clip_views
from agent.errors import AgentError

QUEUE_ALARMS = 300  # the newest alarms the queue shows; older ones are in the ledger

_ALARM_COLUMNS = ("rowid, site_id, event_id, seq, button_id, kind, test, test_claimed, "
                  "pressed_at, received_at, payload")


class LedgerReader:
    """A read-only view of the receiver's ledger; any thread."""

    def __init__(self, conn: sqlite3.Connection, store: Path) -> None:
        self._conn, self.store = conn, store
        self._lock = threading.Lock()  # guards _conn

    @classmethod
    def open(cls, store: Path) -> LedgerReader:
        path = store / "centre.db"
        if not path.exists():
            raise AgentError(f"no ledger at {path}: give --store the receiver's store (start "
                             "`edge-agent central` first)")
        conn = sqlite3.connect(path, check_same_thread=False, timeout=5)
        conn.execute("PRAGMA query_only = 1")
        return cls(conn, store)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def last_alarm(self) -> int:
        rows = self._rows("SELECT MAX(rowid) FROM alarms")
        return int(rows[0][0] or 0)

    def alarms_after(self, rowid: int) -> list[tuple[Any, ...]]:
        return self._rows(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE rowid > ? ORDER BY rowid",
                          (rowid,))

    def newest_alarms(self, limit: int = QUEUE_ALARMS) -> list[tuple[Any, ...]]:
        return self._rows(f"SELECT {_ALARM_COLUMNS} FROM alarms ORDER BY rowid DESC LIMIT ?",
                          (limit,))

    def alarm(self, site_id: str, event_id: str) -> tuple[Any, ...] | None:
        rows = self._rows(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE site_id = ? AND "
                          "event_id = ?", (site_id, event_id))
        return rows[0] if rows else None

    def clips(self, site_id: str, event_id: str) -> list[tuple[str, int, str]]:
        """(camera, segments, problem) of each clip written for this event."""
        return [(str(a), int(b), str(c)) for a, b, c in self._rows(
            "SELECT camera_id, segments, problem FROM clips WHERE site_id = ? AND event_id = ? "
            "ORDER BY camera_id", (site_id, event_id))]

    def last_clip(self) -> int:
        rows = self._rows("SELECT MAX(rowid) FROM clips")
        return int(rows[0][0] or 0)

    def clips_after(self, rowid: int) -> list[tuple[int, str, str, str]]:
        """(rowid, site, event, camera) of the clips written since ``rowid``."""
        return [(int(a), str(b), str(c), str(d)) for a, b, c, d in self._rows(
            "SELECT rowid, site_id, event_id, camera_id FROM clips WHERE rowid > ? "
            "ORDER BY rowid", (rowid,))]

    def sites(self) -> list[tuple[str, str, str, str | None]]:
        """(site, state, since, walk test until) of every site the receiver has heard from."""
        return [(str(a), str(b), str(c), d) for a, b, c, d in self._rows(
            "SELECT site_id, state, changed_at, test_until FROM sites ORDER BY site_id")]


def alarm_view(row: tuple[Any, ...], db: Database, ledger: LedgerReader) -> dict[str, Any]:
    """One alarm as the page shows it, with its incident (acknowledgement, box, closing) and
    its clips."""
    _rowid, site, event, seq, button, kind, test, claimed, pressed, received, payload = row
    sent = json.loads(payload)
    view: dict[str, Any] = {
        "site_id": site, "event_id": event, "seq": seq, "button_id": button, "kind": kind,
        "location": sent.get("location", ""), "detail": sent.get("detail", ""),
        "pressed_at": pressed, "received_at": received,
        "clock_synced": sent.get("clock_synced") is True, "test": bool(test),
        "test_refused": bool(claimed) and not bool(test), "ack": None, "closed": None,
        "clips": clip_views(ledger.store, site, event, ledger.clips(site, event)),
    }
    incident = db.row(
        "SELECT i.acked_by, i.acked_at, i.reason, i.command_id, i.closed_by, i.closed_at, "
        "i.note, c.result_at, c.ok, c.reason FROM incidents i LEFT JOIN commands c ON "
        "c.id = i.command_id WHERE i.site_id = ? AND i.event_id = ?", (site, event))
    if incident is not None:
        by, at, reason, command, closed_by, closed_at, note, result_at, ok, why = incident
        view["ack"] = {"by": by, "at": at, "reason": reason, "command_id": command,
                       "box_at": result_at, "box_ok": None if ok is None else bool(ok),
                       "box_reason": why or ""}
        if closed_at is not None:
            view["closed"] = {"by": closed_by, "at": closed_at, "note": note or ""}
    return view
