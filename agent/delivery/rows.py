"""The outbox file: its schema, its row types, and its statements.

Each statement is a function of a connection, run by agent/delivery/outbox.py inside its lock
and its transaction (which keeps the queue's logic: seq, memory hold, order, acknowledgement,
and turns a failing disk into an OutboxError). Why each SQLite choice: outbox.py.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.delivery.protocol import Priority

log = logging.getLogger("agent.outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    priority  INTEGER NOT NULL,
    topic     TEXT    NOT NULL,
    key       TEXT    NOT NULL UNIQUE,   -- event_id / chunk id: enqueueing twice is a no-op
    qos       INTEGER NOT NULL,
    retain    INTEGER NOT NULL,
    payload   BLOB    NOT NULL,          -- the whole message, or the header of a file chunk
    blob_path TEXT,                      -- clip chunks: bytes are read from the spool at send time
    blob_off  INTEGER,
    blob_len  INTEGER,
    state     INTEGER NOT NULL DEFAULT 0, -- a RowState
    seq       INTEGER                     -- alarms: their seq, the order they are sent in
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (priority, id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('seq', 0);
CREATE TABLE IF NOT EXISTS dc09 (
    id        INTEGER PRIMARY KEY AUTOINCREMENT, -- the order the events happened in
    priority  INTEGER NOT NULL,                  -- 0 alarms, 1 the rest (troubles, tests, paths)
    kind      TEXT    NOT NULL,                  -- an agent.delivery.dc09.events.EventKind
    zone      INTEGER NOT NULL,
    location  TEXT    NOT NULL,                  -- as configured; transliterated when sent
    at        REAL    NOT NULL,                  -- the event's wall time
    event_id  TEXT    NOT NULL DEFAULT '',       -- the MQTT alarm's, when there is one
    state     INTEGER NOT NULL DEFAULT 0,        -- a RowState: READY or REFUSED
    reason    TEXT    NOT NULL DEFAULT ''        -- why it was refused
);
"""


class RowState(enum.IntEnum):
    """What a stored row waits for. IN_FLIGHT is not here: it is a mark in the uplink's
    memory, so a crash can never leave a row in it."""

    READY = 0  # to be sent
    DELIVERED = 1  # an alarm the broker has acknowledged, kept until the centre's receipt
    REFUSED = 2  # DC-09: the receiver will never take it (DUH), or it cannot be made into an
    # event; kept for status, never resent


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A byte range of a spool file that becomes the body of a message when it is sent."""

    path: Path
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    priority: Priority
    topic: str
    key: str
    qos: int
    retain: bool
    payload: bytes  # complete and ready to publish
    seq: int | None = None  # alarms only


def setup(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "size" in columns:  # made by an older agent; the column was written, never read
        conn.execute("ALTER TABLE messages DROP COLUMN size")
        log.info("outbox: dropped the unused size column of an older outbox; its messages stay")


def insert(
    conn: sqlite3.Connection,
    priority: Priority,
    topic: str,
    key: str,
    payload: bytes,
    qos: int,
    retain: bool,
    blob: BlobRef | None = None,
    seq: int | None = None,
) -> bool:
    cur = conn.execute(
        "INSERT OR IGNORE INTO messages "
        "(priority, topic, key, qos, retain, payload, blob_path, blob_off, blob_len, seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            int(priority),
            topic,
            key,
            qos,
            int(retain),
            payload,
            str(blob.path) if blob else None,
            blob.offset if blob else None,
            blob.length if blob else None,
            seq,
        ),
    )
    return cur.rowcount == 1


def read_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()
    return int(row[0]) if row else 0


def read_seq_of(aside: Path) -> int:
    """The seq a corrupt outbox had reached, when that much of it is still readable."""
    try:
        conn = sqlite3.connect(f"file:{aside}?mode=ro", uri=True, timeout=1)
        try:
            return read_seq(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def read_blob(ref: BlobRef) -> bytes | None:
    try:
        with open(ref.path, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.length)
    except OSError:
        return None
    return data if len(data) == ref.length else None


def next_seq(conn: sqlite3.Connection, floor: int) -> int:
    """Allocate the next alarm's seq, above ``floor`` (the last one handed out in this run)."""
    row = conn.execute(
        "UPDATE meta SET value = value + 1 WHERE name = 'seq' RETURNING value"
    ).fetchone()
    seq = int(row[0])
    if seq <= floor:  # the disk is back after alarms held in memory
        seq = floor + 1
        conn.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (seq,))
    return seq


def delete(conn: sqlite3.Connection, ids: Iterable[int]) -> None:
    conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])


def drop_oldest_clip(conn: sqlite3.Connection, keep: str) -> str | None:
    """Delete every chunk of the oldest clip queued before clip ``keep``; its event id."""
    row = conn.execute(
        "SELECT key FROM messages WHERE priority = ? AND id < "
        "(SELECT COALESCE(MIN(id), 0) FROM messages WHERE key LIKE ?) "
        "ORDER BY id LIMIT 1",
        (int(Priority.CLIP), f"{keep}/%"),
    ).fetchone()
    if row is None:
        return None
    event_id = str(row[0]).split("/", 1)[0]
    conn.execute(
        "DELETE FROM messages WHERE priority = ? AND key LIKE ?",
        (int(Priority.CLIP), f"{event_id}/%"),
    )
    return event_id


def ready(
    conn: sqlite3.Connection, skip: list[int], limit: int, max_priority: Priority
) -> list[tuple[Any, ...]]:
    """The first ``limit`` READY rows at or above ``max_priority`` but ``skip``, in send order:
    (id, priority, topic, key, qos, retain, payload, blob_path, blob_off, blob_len, seq)."""
    marks = ",".join("?" * len(skip))
    sql = (
        "SELECT id, priority, topic, key, qos, retain, payload, blob_path, blob_off, blob_len, "
        "seq FROM messages WHERE state = ? AND priority <= ? "
        f"{f'AND id NOT IN ({marks})' if skip else ''} "
        "ORDER BY priority, seq, id LIMIT ?"
    )
    return conn.execute(sql, (RowState.READY, int(max_priority), *skip, limit)).fetchall()


def counts(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
    """(priority, state, rows) for each pair that has rows."""
    rows = conn.execute(
        "SELECT priority, state, COUNT(*) FROM messages GROUP BY priority, state"
    ).fetchall()
    return [(int(p), int(s), int(n)) for p, s, n in rows]


def mark_delivered(conn: sqlite3.Connection, message_id: int) -> None:
    conn.execute("UPDATE messages SET state = ? WHERE id = ?", (RowState.DELIVERED, message_id))


def delivered(conn: sqlite3.Connection) -> list[int]:
    """The alarms waiting for the centre's receipt, oldest first."""
    rows = conn.execute(
        "SELECT id FROM messages WHERE state = ? ORDER BY seq, id", (RowState.DELIVERED,)
    ).fetchall()
    return [int(r[0]) for r in rows]


def get(conn: sqlite3.Connection, message_id: int) -> Message | None:
    """One message by id, whatever its state; its stored payload (not a clip chunk's body)."""
    row = conn.execute(
        "SELECT id, priority, topic, key, qos, retain, payload, seq FROM messages WHERE id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    mid, prio, topic, key, qos, retain, payload, seq = row
    return Message(mid, Priority(prio), topic, key, qos, bool(retain), bytes(payload), seq)


def confirm(conn: sqlite3.Connection, keys: Iterable[str]) -> list[int]:
    """Delete the messages with these keys; the ids deleted."""
    removed = []
    for key in keys:
        row = conn.execute("DELETE FROM messages WHERE key = ? RETURNING id", (key,)).fetchone()
        if row is not None:
            removed.append(int(row[0]))
    return removed
