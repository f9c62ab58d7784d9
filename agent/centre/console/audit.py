"""The console's audit log: every officer's action, append-only and hash-chained.

Each entry's ``hash`` is ``sha256(prev ‖ canonical JSON of the entry)``, and ``prev`` is the
hash of the entry before (64 zeros for the first). The table refuses UPDATE and DELETE
(triggers in database.py); an entry changed or removed behind the database's back breaks the
chain at that entry, which :func:`verify` finds and names. Removing the newest entries leaves a
valid shorter chain: the head hash shown on the audit page is what to copy out (a shift report,
a second system) to anchor it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from agent.centre.console.database import Database
from agent.clock import rfc3339

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    at: str
    actor: str
    action: str
    site_id: str
    target: str
    detail: dict[str, Any]
    prev: str
    hash: str


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    entries: int
    head: str
    problem: str  # "" when ok; else which entry and why


def entry_hash(
    prev: str, id: int, at: str, actor: str, action: str, site_id: str, target: str, detail: str
) -> str:
    body = json.dumps(
        [id, at, actor, action, site_id, target, detail], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def append(
    conn: Any,
    actor: str,
    action: str,
    site_id: str = "",
    target: str = "",
    detail: dict[str, Any] | None = None,
    now: float | None = None,
) -> Entry:
    """Append inside the caller's transaction (so the action and its record commit together)."""
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    id_, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
    at = rfc3339(time.time() if now is None else now)
    text = json.dumps(detail or {}, ensure_ascii=False, sort_keys=True)
    digest = entry_hash(prev, id_, at, actor, action, site_id, target, text)
    conn.execute(
        "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (id_, at, actor, action, site_id, target, text, prev, digest),
    )
    return Entry(id_, at, actor, action, site_id, target, detail or {}, prev, digest)


def record(
    db: Database,
    actor: str,
    action: str,
    site_id: str = "",
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> Entry:
    with db.tx() as conn:
        return append(conn, actor, action, site_id, target, detail)


def entries(db: Database, newest: int = 500) -> list[Entry]:
    rows = db.rows("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (newest,))
    return [_entry(r) for r in reversed(rows)]


def verify(db: Database) -> Verdict:
    """Walk the whole chain from the first entry."""
    prev, count = GENESIS, 0
    for row in db.rows("SELECT * FROM audit ORDER BY id"):
        id_, at, actor, action, site, target, detail, stored_prev, digest = row
        count += 1
        if id_ != count:
            return Verdict(False, count, prev, f"entry {count} is missing (next is {id_})")
        if stored_prev != prev:
            return Verdict(False, count, prev, f"entry {id_} does not follow entry {id_ - 1}")
        if entry_hash(prev, id_, at, actor, action, site, target, detail) != digest:
            return Verdict(False, count, prev, f"entry {id_} was altered")
        prev = digest
    return Verdict(True, count, prev, "")


def _entry(row: tuple[Any, ...]) -> Entry:
    id_, at, actor, action, site, target, detail, prev, digest = row
    return Entry(
        int(id_),
        str(at),
        str(actor),
        str(action),
        str(site),
        str(target),
        json.loads(detail),
        str(prev),
        str(digest),
    )
