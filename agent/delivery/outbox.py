"""The durable outbox: every message the centre must get waits here until the broker acks it.

A message is a row. Its life is a small state machine, mostly implicit so that a crash can never
leave it in a wrong state:

    READY (a row)  --uplink hands it to paho-->  IN_FLIGHT (row + mid, in memory only)
    IN_FLIGHT  --PUBACK-->  DONE (row deleted)
    IN_FLIGHT  --process dies-->  READY again (the in-memory mark dies with it)

Alarms take one more step, because a PUBACK proves only that the broker has them:

    IN_FLIGHT  --PUBACK-->  DELIVERED (a row in RowState.DELIVERED: resent at intervals while
                                        a centre listens)
    DELIVERED  --the centre's receipt-->  DONE (row deleted)

SQLite choices, each deliberate (the file is opened by agent/db.py, like every other; the
statements are in agent/delivery/rows.py):
- WAL with ``synchronous=FULL``: a committed alarm survives power loss (NORMAL may drop the
  last commits). One alarm costs one WAL fsync; the bench shows it fits the 10 ms budget.
- A corrupt file is moved aside and a clean one started: losing what it held is bad, but an
  agent that cannot start loses every future alarm. The seq goes on from the broken file's.
- One connection shared by the button thread (writes alarms) and the uplink thread (reads,
  deletes), serialised by ``_lock``; sqlite3 objects are not safe to use concurrently.
- ``seq`` is allocated in the same transaction as the alarm row, so the persisted counter and
  the stored alarms can never disagree after a crash.
- When the disk refuses a write (full, read-only, failing card), an alarm is kept in memory
  and still sent (agent/delivery/held.py): a broken disk must never silence a button.
- Rows are ordered by (priority, id): id is AUTOINCREMENT, never reused, so FIFO within a class
  holds across restarts, and nothing depends on the wall clock (which jumps on a Pi at NTP sync).
- The DC-09 path keeps its own rows in the same file, in a table of its own (``dc09``, read
  and written by agent/delivery/dc09_queue.py): an alarm's MQTT row and its DC-09 row are
  inserted in the alarm's one transaction (:class:`Companion`), so kill -9 can never leave one
  without the other, and each is acknowledged by its own path. A table rather than a ``path``
  column: the two rows share no field, the MQTT queries stay as they were (none can pick up a
  DC-09 row by forgetting a filter), and an outbox made before it only gains an empty table.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

from agent.db import Sync, open_db, relaxed
from agent.delivery import rows as sql
from agent.delivery.held import MemoryHold
from agent.delivery.protocol import Priority
from agent.delivery.rows import BlobRef, Message, RowState
from agent.errors import OutboxError

__all__ = ["BlobRef", "Companion", "Message", "Outbox", "RowState"]

log = logging.getLogger("agent.outbox")

T = TypeVar("T")


class Companion(Protocol):
    """Another path's row for an alarm (DC-09: agent/delivery/dc09_queue.py), written in the
    alarm's own transaction, and held in memory with it when the disk refuses."""

    def insert(self, conn: sqlite3.Connection) -> None:
        """Inside the alarm's transaction."""

    def committed(self) -> None:
        """After the commit, under the outbox's lock: keep it short."""

    def hold(self) -> None:
        """The disk refused the transaction: keep the row in memory."""


class Outbox:
    """Open with :meth:`open`; the constructor does no I/O so tests can pass a connection in."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        last_seq: int = 0,
        recovered_from: Path | None = None,
    ) -> None:
        self._conn = conn
        self.path = path
        # Guards _conn, _memory and _last_seq. Held for one short transaction at a time and
        # never while calling out of this class.
        self._lock = threading.Lock()
        self._memory = MemoryHold()  # alarms the disk refused
        # The highest seq handed out, by the disk or from memory: seq never repeats in a run,
        # whatever the disk does, and the disk's counter resumes above it.
        self._last_seq = last_seq
        self.disk_error = ""  # the last write failure, for status; empty when the disk is fine
        self.recovered_from = recovered_from  # a corrupt outbox was moved here at open

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> Outbox:
        """Open or create the outbox; a corrupt one is moved aside (``recovered_from``)."""
        opened = open_db(
            path,
            sql.setup,
            what="outbox",
            sync=Sync.FULL,
            private=True,
            lost="alarms queued in it may not have been sent",
            error=OutboxError,
        )
        conn, aside = opened.conn, opened.quarantined
        last = max(sql.read_seq(conn), sql.read_seq_of(aside) if aside else 0)
        if aside is not None:  # seq goes on from the broken file's, so the centre sees a gap
            with conn:
                conn.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (last,))
        return cls(conn, path, last, aside)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- writing ----------------------------------------------------------------------------

    def add_alarm(
        self, topic: str, key: str, build: Callable[[int], bytes], also: Companion | None = None
    ) -> tuple[int, bool]:
        """Allocate the next ``seq``, store the alarm built from it (and ``also``, another
        path's row for it), and sync, in one commit.

        Returns (seq, durable). When durable, the alarm survives kill -9 and power loss; when
        the disk refused it, it is held in memory and sent all the same.
        """

        def tx(conn: sqlite3.Connection) -> int:
            seq = sql.next_seq(conn, self._last_seq)
            sql.insert(conn, Priority.ALARM, topic, key, build(seq), qos=1, retain=False, seq=seq)
            if also is not None:
                also.insert(conn)
            return seq

        def committed(seq: int) -> None:  # under the lock: a memory hold cannot take it too
            self._last_seq = seq
            if also is not None:
                also.committed()

        try:
            seq = self.transaction(tx, committed=committed)
        except OutboxError as exc:
            seq = self._hold_in_memory(topic, key, build, exc)
            if also is not None:
                also.hold()
            return seq, False
        self.disk_error = ""
        return seq, True

    def _hold_in_memory(
        self, topic: str, key: str, build: Callable[[int], bytes], exc: OutboxError
    ) -> int:
        log.critical("alarm %s NOT on disk (%s); holding it in memory and sending it", key, exc)
        self.disk_error = str(exc)
        with self._lock:
            self._last_seq += 1
            seq = self._last_seq
            self._memory.add(topic, key, build(seq), seq)
        return seq

    def add(
        self,
        priority: Priority,
        topic: str,
        key: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        blob: BlobRef | None = None,
    ) -> bool:
        """Queue one message; False when one with this key is already queued (a retry)."""
        return self.transaction(
            lambda conn: sql.insert(conn, priority, topic, key, payload, qos, retain, blob)
        )

    def add_many(self, rows: Iterable[tuple[Priority, str, str, bytes, BlobRef | None]]) -> int:
        """Queue many messages (a segment's chunks) in one transaction and one sync."""

        def tx(conn: sqlite3.Connection) -> int:
            return sum(sql.insert(conn, p, t, k, b, 1, False, blob) for p, t, k, b, blob in rows)

        return self.transaction(tx)

    def ack(self, message_id: int) -> None:
        """The broker has it: forget it. A crash before this commits only causes a resend."""
        if message_id < 0:
            with self._lock:
                self._memory.forget(message_id)
            return
        self.ack_many([message_id])

    def ack_many(self, message_ids: list[int]) -> None:
        """Forget many acknowledged messages in one commit (video: one fsync per batch)."""
        self.transaction(lambda conn: sql.delete(conn, message_ids), durable=False)

    def drop_oldest_clip(self, keep: str) -> str | None:
        """Drop every queued chunk of the oldest clip queued before ``keep`` (the one being
        recorded); returns its event id, or None when no older clip is left. Only older ones:
        clips recorded at the same time must not drop each other in turn."""
        return self.transaction(lambda conn: sql.drop_oldest_clip(conn, keep))

    # --- reading ----------------------------------------------------------------------------

    def next_batch(
        self, exclude: Iterable[int], limit: int, max_priority: Priority
    ) -> list[Message]:
        """The first ``limit`` ready messages at or above ``max_priority``, in send order:
        alarms by seq (held in memory or not), then the other classes, FIFO within each.

        A disk that fails to read does not stop the alarms held in memory."""
        skip = sorted(exclude)
        with self._lock:
            memory = self._memory.ready(skip)
            try:
                found = sql.ready(self._conn, skip, limit, max_priority)
            except sqlite3.Error as exc:
                log.error("cannot read the outbox (%s); sending what memory holds", exc)
                found = []
        out: list[Message] = []
        for mid, prio, topic, key, qos, retain, payload, bpath, boff, blen, seq in found:
            if bpath is not None:
                body = sql.read_blob(BlobRef(Path(bpath), boff, blen))
                if body is None:
                    log.error("clip chunk %s lost its spool file %s; dropping it", key, bpath)
                    self.ack(mid)
                    continue
                payload = bytes(payload) + body
            out.append(
                Message(mid, Priority(prio), topic, key, qos, bool(retain), bytes(payload), seq)
            )
        alarms = sorted(
            (m for m in [*out, *memory] if m.priority is Priority.ALARM), key=lambda m: m.seq or 0
        )
        return (alarms + [m for m in out if m.priority is not Priority.ALARM])[:limit]

    def depth(self) -> dict[str, int]:
        """Messages waiting per class, by class name, and alarms awaiting the centre's receipt."""
        counts = {p.name.lower(): 0 for p in Priority} | {"unconfirmed": 0}
        with self._lock:
            counts["alarm"], counts["unconfirmed"] = self._memory.counts()
            try:
                found = sql.counts(self._conn)
            except sqlite3.Error as exc:  # status must answer even when the card is failing
                self.disk_error = f"cannot read the outbox: {exc}"
                return counts
        for prio, state, n in found:
            ready = RowState(state) is RowState.READY
            counts[Priority(prio).name.lower() if ready else "unconfirmed"] += n
        return counts

    def last_seq(self) -> int:
        return self._last_seq

    # --- end-to-end confirmation ------------------------------------------------------------

    def mark_delivered(self, message_id: int) -> None:
        """The broker has the alarm; keep it until the centre confirms it."""
        if message_id < 0:  # held in memory: it waits for the receipt there
            with self._lock:
                self._memory.mark_delivered(message_id)
            return
        self.transaction(lambda conn: sql.mark_delivered(conn, message_id), durable=False)

    def delivered(self) -> list[int]:
        """Alarms awaiting a receipt, oldest first (after a restart, to resend them)."""
        with self._lock:
            held = self._memory.delivered()
            return self._read(sql.delivered) + held

    def get(self, message_id: int) -> Message | None:
        """One stored message by id, whatever its state (for a resend)."""
        with self._lock:
            held = self._memory.get(message_id)
            return held if held is not None else self._read(lambda c: sql.get(c, message_id))

    def confirm(self, keys: Iterable[str]) -> list[int]:
        """The centre has these (by event_id): forget them. Returns the ids removed."""
        wanted = list(keys)
        with self._lock:
            gone = self._memory.confirm(wanted)
        return gone + (
            self.transaction(lambda conn: sql.confirm(conn, wanted), durable=False)
            if wanted
            else []
        )

    # --- one transaction or read at a time (also for dc09_queue.py's rows) ------------------

    def transaction(
        self,
        tx: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = True,
        committed: Callable[[T], None] | None = None,
    ) -> T:
        """One transaction under the lock. ``durable=False`` is for bookkeeping whose loss on
        power failure only causes a resend (acks, receipts): it commits without an fsync of
        its own, so an alarm's commit never waits behind one. The next durable commit syncs it
        anyway. ``committed`` runs after the commit, still under the lock."""
        with self._lock:
            try:
                level = contextlib.nullcontext() if durable else relaxed(self._conn)
                with level, self._conn:  # BEGIN … COMMIT (and the WAL fsync), or ROLLBACK
                    result = tx(self._conn)
                if committed is not None:
                    committed(result)
                return result
            except sqlite3.Error as exc:
                raise OutboxError(
                    f"outbox write failed ({exc}): the disk at {self.path.parent} may be full, "
                    "read-only or failing"
                ) from exc

    def query(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """Reads under the lock; a failing disk becomes an OutboxError."""
        with self._lock:
            return self._read(read)

    def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """:meth:`query` under the caller's lock."""
        try:
            return read(self._conn)
        except sqlite3.Error as exc:
            raise OutboxError(
                f"cannot read the outbox ({exc}): the disk at {self.path.parent} may be failing"
            ) from exc

    def integrity_ok(self) -> bool:
        [(result,)] = self.query(lambda conn: conn.execute("PRAGMA integrity_check").fetchall())
        return bool(result == "ok")
