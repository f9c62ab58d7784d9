"""The DC-09 path's queue in the outbox: the transmitter's ``EventQueue`` on durable rows.

Each DC-09 event is a row of the outbox's ``dc09`` table (agent/delivery/rows.py): its kind,
zone, location and wall time, never a frame (the sequence number, timestamp and key are the
transmitter's, at send time). An alarm's DC-09 row is inserted in the alarm's own transaction
(:meth:`OutboxEventQueue.row`, an outbox ``Companion``); events that only DC-09 carries (test
mode, the MQTT path's state, a restore on release) in one of their own (:meth:`add`). Both
commit with ``synchronous=FULL``: what a press returns is on disk.

Rules, as for the MQTT rows:

- Delete only on the receiver's ACK; a DUH marks the row REFUSED: never resent, listed in
  status (the newest :data:`KEEP_REFUSED` are kept). A row that cannot be made into an event
  (an unknown kind from a newer agent, a zone out of range) is set aside the same way, with
  the reason, instead of raising: the transmitter would otherwise crash on it at every restart.
- When the disk refuses a write, the event is held in memory (negative ids) and sent all the
  same. The next write that succeeds moves the held events to disk first, so they are durable
  again and keep their place: every held event is newer than every row on disk.
- An ACK or DUH whose disk write fails is remembered, so the row is not sent again, and written
  with the next one.
- Order: alarms (panic, hold-up and their restores) first, then the rest (troubles, tests,
  path events), oldest first within each (AUTOINCREMENT ids, not the wall clock).

Threading: every method may be called from any thread. The outbox's lock is taken first, this
module's ``_lock`` (memory rows and the bookkeeping) inside it, never the other way round.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from agent.delivery.dc09.events import Event, EventKind
from agent.delivery.dc09.queue import Queued
from agent.delivery.outbox import Companion, Outbox
from agent.delivery.rows import RowState
from agent.errors import OutboxError

log = logging.getLogger("agent.dc09")

KEEP_REFUSED = 100  # refused rows kept for status; a misconfigured receiver must not fill a disk
ALARMS = frozenset(
    {
        EventKind.PANIC,
        EventKind.PANIC_RESTORE,
        EventKind.HOLDUP,
        EventKind.HOLDUP_RESTORE,
        EventKind.TAMPER,
        EventKind.TAMPER_RESTORE,
    }
)
MQTT_DOWN = "dc09_mqtt_path_down"  # meta: path_fail queued and no path_restore since
_BATCH = 16  # rows read per look: enough to step over rows set aside


@dataclass(frozen=True, slots=True)
class Stored:
    """A DC-09 event as the outbox keeps it (a row, or held in memory with a negative id)."""

    id: int
    kind: str
    zone: int
    location: str
    at: float  # the event's wall time
    event_id: str = ""  # the MQTT alarm's, when there is one
    state: RowState = RowState.READY
    reason: str = ""

    @property
    def priority(self) -> int:
        return 0 if self.kind in ALARMS else 1

    def event(self) -> Event:
        """Raises ValueError for a row that is not a DC-09 event."""
        return Event(EventKind(self.kind), self.zone, self.location)


def _stored(event: Event, at: float, event_id: str) -> Stored:
    return Stored(0, str(event.kind), event.zone, event.location, at, event_id)


class _Row:
    """An event on its way to disk: inserted, with any held events before it, in one
    transaction (an alarm's, or its own); held in memory if the disk refuses."""

    def __init__(self, queue: OutboxEventQueue, row: Stored) -> None:
        self._queue = queue
        self._row = row
        self._moved: dict[int, int] = {}  # held id -> id on disk, once committed

    def insert(self, conn: sqlite3.Connection) -> None:
        self._moved = {held.id: _insert(conn, held) for held in self._queue.held()}
        _insert(conn, self._row)

    def committed(self) -> None:
        self._queue.moved(self._moved)

    def hold(self) -> None:
        self._queue.hold(self._row)


def _insert(conn: sqlite3.Connection, row: Stored) -> int:
    cur = conn.execute(
        "INSERT INTO dc09 (priority, kind, zone, location, at, event_id, state, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.priority,
            row.kind,
            row.zone,
            row.location,
            row.at,
            row.event_id,
            int(row.state),
            row.reason,
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


class OutboxEventQueue:
    """The transmitter's queue (agent/delivery/dc09/queue.py) on the outbox; no I/O here."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._lock = threading.Lock()  # guards everything below; see the module's docstring
        self._memory: list[Stored] = []  # held while the disk refuses, oldest first
        self._ids = itertools.count(-1, -1)
        self._moved: dict[int, int] = {}  # a held event's id -> its row, after the disk came back
        self._unsynced: dict[int, str | None] = {}  # done rows not yet written: None = acked
        self._mqtt_down: bool | None = None  # MQTT_DOWN as last written or held
        self._read_failed = False

    # --- writing (any thread) ---------------------------------------------------------------

    def row(self, event: Event, at: float, event_id: str) -> Companion:
        """The DC-09 row of an alarm, for ``Outbox.add_alarm(also=...)``."""
        return _Row(self, _stored(event, at, event_id))

    def add(self, event: Event, at: float, *, mqtt_down: bool | None = None) -> bool:
        """Store an event only DC-09 carries; True when it is on disk. With ``mqtt_down``
        (path_fail / path_restore) the MQTT path's reported state is kept with it, so a
        restart knows whether a restore is owed."""
        row = _Row(self, _stored(event, at, ""))

        def tx(conn: sqlite3.Connection) -> None:
            row.insert(conn)
            if mqtt_down is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                    (MQTT_DOWN, int(mqtt_down)),
                )

        if mqtt_down is not None:
            with self._lock:
                self._mqtt_down = mqtt_down
        try:
            self._outbox.transaction(tx, committed=lambda _: row.committed())
        except OutboxError as exc:
            log.critical(
                "DC-09 %s zone %d NOT on disk (%s); holding it in memory and sending it",
                event.kind,
                event.zone,
                exc,
            )
            row.hold()
            return False
        return True

    def mqtt_down(self) -> bool:
        """Whether the centre was told the MQTT path failed and not yet that it is back."""
        with self._lock:
            if self._mqtt_down is not None:
                return self._mqtt_down

        def read(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (MQTT_DOWN,)).fetchone()
            return bool(row and row[0])

        try:
            return self._outbox.query(read)
        except OutboxError:
            return False

    # --- the transmitter's calls (EventQueue) -----------------------------------------------

    def next_event(self) -> Queued | None:
        while True:
            rows = self._look()
            for row in rows:
                try:
                    return Queued(row.id, row.event())
                except (ValueError, TypeError) as exc:  # a damaged or newer agent's row
                    log.error(
                        "dc09: event %d (%r zone %s) set aside: %s", row.id, row.kind, row.zone, exc
                    )
                    self.refused(row.id, f"not a DC-09 event this agent can send: {exc}")
            if len(rows) < _BATCH:
                return None

    def acked(self, event_id: int) -> None:
        self._done(event_id, None)

    def refused(self, event_id: int, reason: str) -> None:
        self._done(event_id, reason)

    def depth(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(
                    "SELECT COUNT(*) FROM dc09 WHERE state = ?", (RowState.READY,)
                ).fetchone()[0]
            )

        try:
            on_disk = self._outbox.query(count)
        except OutboxError:
            on_disk = 0
        with self._lock:
            held = sum(r.state is RowState.READY for r in self._memory)
            return max(0, on_disk - len(self._unsynced)) + held

    def refusals(self, limit: int = 5) -> tuple[int, list[Stored]]:
        """How many are refused, and the newest ``limit`` of them, newest first."""

        def read(conn: sqlite3.Connection) -> tuple[int, list[Stored]]:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM dc09 WHERE state = ?", (RowState.REFUSED,)
            ).fetchone()
            rows = conn.execute(
                "SELECT id, kind, zone, location, at, event_id, state, reason FROM dc09 "
                "WHERE state = ? ORDER BY id DESC LIMIT ?",
                (RowState.REFUSED, limit),
            ).fetchall()
            return int(n), [_row(r) for r in rows]

        try:
            n, rows = self._outbox.query(read)
        except OutboxError:
            n, rows = 0, []
        with self._lock:
            held = [r for r in reversed(self._memory) if r.state is RowState.REFUSED]
        return n + len(held), (held + rows)[:limit]

    # --- inside ------------------------------------------------------------------------------

    def _look(self) -> list[Stored]:
        """The next ready events, in sending order: on disk, then held in memory."""

        def read(conn: sqlite3.Connection) -> list[Stored]:
            with self._lock:
                skip = list(self._unsynced)
                held = [r for r in self._memory if r.state is RowState.READY]
            marks = ",".join("?" * len(skip))
            rows = conn.execute(
                "SELECT id, kind, zone, location, at, event_id, state, reason FROM dc09 "
                f"WHERE state = ? {f'AND id NOT IN ({marks})' if skip else ''} "
                "ORDER BY priority, id LIMIT ?",
                (RowState.READY, *skip, _BATCH),
            ).fetchall()
            return [_row(r) for r in rows] + held

        try:
            rows = self._outbox.query(read)
            self._read_failed = False
        except OutboxError as exc:
            if not self._read_failed:
                log.error("dc09: %s; sending the events held in memory", exc)
            self._read_failed = True
            with self._lock:
                rows = [r for r in self._memory if r.state is RowState.READY]
        # Held events are newer than any row; within a class, rows by id, held by age.
        return sorted(rows, key=lambda r: (r.priority, r.id < 0, abs(r.id)))

    def _done(self, event_id: int, reason: str | None) -> None:
        """Acked (``reason`` None) or refused: in memory, or written with any left unwritten."""
        with self._lock:
            if event_id < 0:
                held = next((r for r in self._memory if r.id == event_id), None)
                if held is not None:
                    self._memory.remove(held)
                    if reason is not None:
                        self._memory.append(
                            dataclasses.replace(held, state=RowState.REFUSED, reason=reason)
                        )
                    return
                if event_id not in self._moved:
                    return
                event_id = self._moved.pop(event_id)  # sent from memory, on disk since
            self._unsynced[event_id] = reason
            todo = dict(self._unsynced)

        def tx(conn: sqlite3.Connection) -> None:
            for row_id, why in todo.items():
                if why is None:
                    conn.execute("DELETE FROM dc09 WHERE id = ?", (row_id,))
                else:
                    conn.execute(
                        "UPDATE dc09 SET state = ?, reason = ? WHERE id = ?",
                        (RowState.REFUSED, why, row_id),
                    )
            if any(why is not None for why in todo.values()):
                conn.execute(
                    "DELETE FROM dc09 WHERE state = ? AND id NOT IN (SELECT id FROM "
                    "dc09 WHERE state = ? ORDER BY id DESC LIMIT ?)",
                    (RowState.REFUSED, RowState.REFUSED, KEEP_REFUSED),
                )

        def written(_: None) -> None:
            with self._lock:
                for row_id, why in todo.items():
                    if row_id in self._unsynced and self._unsynced[row_id] == why:
                        del self._unsynced[row_id]

        try:  # bookkeeping: its loss only causes a resend, so no fsync of its own
            self._outbox.transaction(tx, durable=False, committed=written)
        except OutboxError as exc:
            log.error(
                "dc09: cannot record that event %d was %s (%s); it is not sent again "
                "and is recorded with the next one",
                event_id,
                "acknowledged" if reason is None else "refused",
                exc,
            )

    # --- for _Row: the disk's answer about held events ---------------------------------------

    def held(self) -> list[Stored]:
        with self._lock:
            return list(self._memory)

    def hold(self, row: Stored) -> None:
        with self._lock:
            self._memory.append(dataclasses.replace(row, id=next(self._ids)))

    def moved(self, moved: dict[int, int]) -> None:
        """Held events are on disk now (under the outbox's lock, after the commit)."""
        with self._lock:
            for held_id, row_id in moved.items():
                held = next((r for r in self._memory if r.id == held_id), None)
                if held is None:  # acknowledged while the transaction ran: not to send again
                    self._unsynced[row_id] = None
                    continue
                self._memory.remove(held)
                if held.state is RowState.REFUSED:  # perhaps refused while it ran: say so
                    self._unsynced[row_id] = held.reason
                else:
                    self._moved[held_id] = row_id


def _row(r: Any) -> Stored:
    return Stored(r[0], r[1], r[2], r[3], r[4], r[5], RowState(r[6]), r[7])
