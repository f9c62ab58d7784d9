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
import time
from pathlib import Path
from typing import Any

from agent.centre.console.database import Database
from agent.centre.console.media import clip_views
from agent.errors import AgentError

QUEUE_ALARMS = 300  # the newest alarms the queue shows; older ones are in the ledger

_ALARM_COLUMNS = (
    "{id}, site_id, event_id, seq, button_id, kind, test, test_claimed, "
    "pressed_at, received_at, payload"
)

Changes = tuple[list[tuple[Any, ...]], list[tuple[int, str, str, str]]]  # alarms, clips


class LedgerReader:
    """A read-only view of the receiver's ledger, SQLite or PostgreSQL; any thread. The SQL is
    written with ``?`` parameters and ``{id}`` for the row number (SQLite's ``rowid``, the
    ``id`` column in PostgreSQL)."""

    def __init__(self, conn: Any, store: Path, listener: Any = None) -> None:
        self._conn, self.store = conn, store
        self._listener = listener  # PostgreSQL: a connection that LISTENs for new rows
        self._lock = threading.Lock()  # guards _conn
        self._last = (0, 0)  # SQLite: the newest alarm and clip seen

    @classmethod
    def open(cls, store: Path, url: str | None = None) -> LedgerReader:
        if url is not None:
            from agent.centre.pgledger import CHANNEL, connect

            listener = connect(url)
            listener.execute(f"LISTEN {CHANNEL}")
            return cls(connect(url), store, listener)
        path = store / "centre.db"
        if not path.exists():
            raise AgentError(
                f"no ledger at {path}: give --store the receiver's store (start "
                "`edge-agent central` first)"
            )
        conn = sqlite3.connect(path, check_same_thread=False, timeout=5)
        conn.execute("PRAGMA query_only = 1")
        reader = cls(conn, store)
        reader._last = (reader._max("alarms"), reader._max("clips"))
        return reader

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._listener is not None:
                self._listener.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        pg = self._listener is not None
        sql = sql.format(id="id" if pg else "rowid")
        with self._lock:
            return list(
                self._conn.execute(sql.replace("?", "%s") if pg else sql, params).fetchall()
            )

    def _max(self, table: str) -> int:
        return int(self._rows(f"SELECT MAX({{id}}) FROM {table}")[0][0] or 0)

    def changes(self, timeout: float) -> Changes:
        """The alarms and clips stored since the last call, waiting up to ``timeout`` for one.

        SQLite: one writer at a time, so row numbers commit in order; the newest seen is
        remembered. PostgreSQL: two receivers' ids may commit out of order, so the ledger
        NOTIFYs each new row at its commit (agent/centre/pgledger.py) and exactly those are
        read."""
        if self._listener is None:
            time.sleep(timeout)
            alarms = self._rows(
                f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE {{id}} > ? ORDER BY {{id}}",
                (self._last[0],),
            )
            clips = self._clips("{id} > ?", self._last[1])
            self._last = (
                int(alarms[-1][0]) if alarms else self._last[0],
                clips[-1][0] if clips else self._last[1],
            )
            return alarms, clips
        ids: dict[str, list[int]] = {"alarms": [], "clips": []}
        for note in self._listener.notifies(timeout=timeout, stop_after=1000):
            table, _, number = note.payload.partition(":")
            ids.setdefault(table, []).append(int(number))
        alarms = (
            self._rows(
                f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE id = ANY(?) ORDER BY id",
                (ids["alarms"],),
            )
            if ids["alarms"]
            else []
        )
        return alarms, self._clips("id = ANY(?)", ids["clips"]) if ids["clips"] else []

    def _clips(self, where: str, value: Any) -> list[tuple[int, str, str, str]]:
        return [
            (int(a), str(b), str(c), str(d))
            for a, b, c, d in self._rows(
                "SELECT {id}, site_id, event_id, camera_id FROM clips WHERE "
                + where
                + " ORDER BY {id}",
                (value,),
            )
        ]

    def newest_alarms(self, limit: int = QUEUE_ALARMS) -> list[tuple[Any, ...]]:
        return self._rows(
            f"SELECT {_ALARM_COLUMNS} FROM alarms ORDER BY {{id}} DESC LIMIT ?", (limit,)
        )

    def alarm(self, site_id: str, event_id: str) -> tuple[Any, ...] | None:
        rows = self._rows(
            f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE site_id = ? AND event_id = ?",
            (site_id, event_id),
        )
        return rows[0] if rows else None

    def clips(self, site_id: str, event_id: str) -> list[tuple[str, int, str]]:
        """(camera, segments, problem) of each clip written for this event."""
        return [
            (str(a), int(b), str(c))
            for a, b, c in self._rows(
                "SELECT camera_id, segments, problem FROM clips WHERE site_id = ? AND event_id = ? "
                "ORDER BY camera_id",
                (site_id, event_id),
            )
        ]

    def sites(self) -> list[tuple[str, str, str, str | None]]:
        """(site, state, since, walk test until) of every site the receiver has heard from."""
        return [
            (str(a), str(b), str(c), d)
            for a, b, c, d in self._rows(
                "SELECT site_id, state, changed_at, test_until FROM sites ORDER BY site_id"
            )
        ]


def alarm_view(row: tuple[Any, ...], db: Database, ledger: LedgerReader) -> dict[str, Any]:
    """One alarm as the page shows it, with its incident (acknowledgement, box, closing) and
    its clips."""
    _rowid, site, event, seq, button, kind, test, claimed, pressed, received, payload = row
    sent = json.loads(payload)
    view: dict[str, Any] = {
        "site_id": site,
        "event_id": event,
        "seq": seq,
        "button_id": button,
        "kind": kind,
        "location": sent.get("location", ""),
        "detail": sent.get("detail", ""),
        "pressed_at": pressed,
        "received_at": received,
        "clock_synced": sent.get("clock_synced") is True,
        "test": bool(test),
        "test_refused": bool(claimed) and not bool(test),
        "ack": None,
        "closed": None,
        "clips": clip_views(ledger.store, site, event, ledger.clips(site, event)),
    }
    incident = db.row(
        "SELECT i.acked_by, i.acked_at, i.reason, i.command_id, i.closed_by, i.closed_at, "
        "i.note, c.result_at, c.ok, c.reason FROM incidents i LEFT JOIN commands c ON "
        "c.id = i.command_id WHERE i.site_id = ? AND i.event_id = ?",
        (site, event),
    )
    if incident is not None:
        by, at, reason, command, closed_by, closed_at, note, result_at, ok, why = incident
        view["ack"] = {
            "by": by,
            "at": at,
            "reason": reason,
            "command_id": command,
            "box_at": result_at,
            "box_ok": None if ok is None else bool(ok),
            "box_reason": why or "",
        }
        if closed_at is not None:
            view["closed"] = {"by": closed_by, "at": closed_at, "note": note or ""}
    return view
