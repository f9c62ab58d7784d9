"""The centre's ledger in PostgreSQL: several receivers (and consoles) on several machines share
it, each taking every alarm, and each alarm is stored once by (site, event).

The same records, rules and reads as the SQLite ledger (agent/centre/ledgerstore.py: alarms
once, keys with the site, rows inserted never replaced, a clip's segments kept), for a centre
with failover:

- **Once under concurrency.** Two receivers store the same alarm at the same moment: the
  primary key (site, event) lets one insert win and the other sees a duplicate (``ON CONFLICT
  DO NOTHING``), compared with the stored payload as in SQLite. A site's alarms are stored under
  a transaction-scoped advisory lock per site, so the seq gap bookkeeping of two receivers
  cannot interleave; a group takes its sites' locks in sorted order (no deadlock between two
  receivers with overlapping groups).
- **Durable before the receipt.** Alarms and clips commit with ``synchronous_commit = on`` (the
  WAL flushed); bookkeeping (site states, reports, links) with ``off``, as SQLite's
  ``synchronous=NORMAL``: it is only shown, and the next alarm's commit flushes it.
- **The console hears of each new alarm and clip** by ``NOTIFY edge_alarm`` (``alarms:ID``,
  ``clips:ID``, sent at commit), so it needs no polling of a table whose ids may commit out of
  order (agent/centre/console/records.py).

One connection per ledger, one lock, one short transaction at a time (the receiver's threads
share it as they share the SQLite one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg

from agent.centre.ledgerrecords import Row, Statement, Stored, alarm_row, stamp
from agent.centre.ledgerstore import LedgerStore
from agent.delivery.protocol import Alarm
from agent.errors import AgentError

CHANNEL = "edge_alarm"

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    site_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    button_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    test         INTEGER NOT NULL,
    test_claimed INTEGER NOT NULL,
    pressed_at   TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    payload      TEXT NOT NULL,
    PRIMARY KEY (site_id, event_id)
);
CREATE INDEX IF NOT EXISTS alarms_site_seq ON alarms (site_id, seq);
CREATE INDEX IF NOT EXISTS alarms_event ON alarms (event_id);
CREATE TABLE IF NOT EXISTS sites (
    site_id TEXT PRIMARY KEY, state TEXT NOT NULL, changed_at TEXT NOT NULL,
    status TEXT NOT NULL, test_until TEXT
);
CREATE TABLE IF NOT EXISTS gaps (
    site_id TEXT NOT NULL, seq BIGINT NOT NULL, detected_at TEXT NOT NULL,
    PRIMARY KEY (site_id, seq)
);
CREATE TABLE IF NOT EXISTS clips (
    id BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    site_id TEXT NOT NULL, event_id TEXT NOT NULL, camera_id TEXT NOT NULL, path TEXT NOT NULL,
    segments INTEGER NOT NULL, bytes BIGINT NOT NULL, sha256 TEXT NOT NULL,
    manifest TEXT NOT NULL, written_at TEXT NOT NULL, verified INTEGER NOT NULL,
    problem TEXT NOT NULL,
    PRIMARY KEY (site_id, event_id, camera_id)
);
CREATE TABLE IF NOT EXISTS reports (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id TEXT NOT NULL, at TEXT NOT NULL, what TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_site ON reports (site_id, id);
CREATE TABLE IF NOT EXISTS links (
    receiver TEXT NOT NULL, link TEXT NOT NULL, up INTEGER NOT NULL, since TEXT NOT NULL,
    lost_at TEXT, regained_at TEXT, outages INTEGER NOT NULL, last_error TEXT NOT NULL,
    PRIMARY KEY (receiver, link)
);
CREATE OR REPLACE FUNCTION edge_alarm_notify() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('edge_alarm', TG_TABLE_NAME || ':' || NEW.id); RETURN NULL; END
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER alarms_notify AFTER INSERT ON alarms
    FOR EACH ROW EXECUTE FUNCTION edge_alarm_notify();
CREATE OR REPLACE TRIGGER clips_notify AFTER INSERT ON clips
    FOR EACH ROW EXECUTE FUNCTION edge_alarm_notify()
"""


def connect(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise AgentError(f"cannot reach the ledger's PostgreSQL ({exc}): check --ledger") from exc


def connect_with_schema(url: str, schema: str, lock: str) -> psycopg.Connection[Any]:
    """A connection, once ``schema`` stands: it is made under the advisory lock ``lock``, so
    processes starting together do not race on its ``CREATE ... IF NOT EXISTS``."""
    conn = connect(url)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
        conn.execute(schema)
    return conn


def _columns(rows: Iterable[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """Rows as one list per column: the arrays ``unnest`` takes back apart."""
    return tuple(list(column) for column in zip(*rows, strict=True))


def _walk(
    alarms: list[tuple[Alarm, bytes, bool]],
    inserted: set[tuple[str, str]],
    stored_payloads: dict[tuple[str, str], str],
    tops: dict[str, int],
    gaps: set[tuple[str, int]],
) -> tuple[list[Stored], list[tuple[str, int]], list[tuple[str, int]]]:
    """What storing the group alarm by alarm, in its order, would have found (the SQLite
    ledger's rules): each alarm new or a duplicate (the first of a repeated event in the group
    is the new one), the gap each new one opens in its site's seq above the highest seq stored
    before it, the gap row it fills. ``tops``: each site's highest seq before the group;
    ``gaps``: the gap rows stored at the group's seqs. Returns the results, the gap rows to
    add and those to remove."""
    results: list[Stored] = []
    opened: dict[tuple[str, int], None] = {}  # in order, without repeats
    closed: list[tuple[str, int]] = []
    seen: set[tuple[str, str]] = set()
    for alarm, payload, _test in alarms:
        site, event = alarm.site_id, alarm.event_id
        if (site, event) not in inserted or (site, event) in seen:
            results.append(Stored.duplicate(stored_payloads.get((site, event)), payload.decode()))
            continue
        seen.add((site, event))
        key = (site, alarm.seq)
        filled = key in gaps or key in opened
        if key in gaps:
            gaps.discard(key)
            closed.append(key)
        opened.pop(key, None)
        top = tops.get(site)
        tops[site] = alarm.seq if top is None else max(top, alarm.seq)
        stored = Stored.new_alarm(alarm, top, filled)
        for missing in stored.missing():
            opened[site, missing] = None
        results.append(stored)
    return results, list(opened), closed


class PgLedger(LedgerStore):
    """The ledger in PostgreSQL (agent/centre/ledgerstore.py has its methods)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self._conn = conn  # guarded by _lock: one transaction at a time

    @classmethod
    def open(cls, url: str) -> PgLedger:
        return cls(connect_with_schema(url, SCHEMA, "edge_ledger_schema"))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self, durable: bool = True) -> Iterator[psycopg.Connection[Any]]:
        with self._lock, self._conn.transaction():
            if not durable:
                self._conn.execute("SET LOCAL synchronous_commit = off")
            yield self._conn

    def _rows(self, sql: str, params: Row = ()) -> list[Row]:
        return self._query(_pg(sql), params)

    def _query(self, sql: str, params: Row) -> list[Row]:
        """The rows of a query in psycopg's own terms (``%s``)."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _bookkeep(self, *statements: Statement) -> None:
        with self._tx(durable=False) as conn:
            for sql, params in statements:
                conn.execute(_pg(sql), params)

    # --- alarms ---------------------------------------------------------------------------

    def add_alarms(
        self, alarms: list[tuple[Alarm, bytes, bool]], now: float | None = None
    ) -> list[Stored]:
        """The SQLite ledger's add_alarms in two round trips, whatever the group's size: one
        statement per step over arrays, the seq bookkeeping walked here in the group's order.
        Statement by statement, five round trips an alarm held a 1,000-alarm storm to ~750
        alarms/s (bench/alarm_storm.py)."""
        if not alarms:
            return []
        received = stamp(now)
        sites = sorted({a.site_id for a, _, _ in alarms})
        conn = self._conn
        # Pipelined: the five statements go out together and their answers come back
        # together (one round trip), then the gap rows and the commit (another).
        with self._lock, conn.pipeline(), conn.transaction():
            # The sites' locks in the order of their lock numbers: two receivers with
            # overlapping groups take them in the same order (a deadlock needs opposite ones).
            conn.execute(
                "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtext(s) AS h "
                "FROM unnest(%s::text[]) AS s ORDER BY h) AS locks",
                (sites,),
            )
            tops = conn.execute(  # per site, the index's last entry (not all of its alarms)
                "SELECT s, (SELECT MAX(seq) FROM alarms WHERE site_id = s) "
                "FROM unnest(%s::text[]) AS s",
                (sites,),
            )
            inserted = conn.execute(
                "INSERT INTO alarms (site_id, event_id, seq, button_id, kind, test, "
                "test_claimed, pressed_at, received_at, payload) SELECT * FROM unnest("
                "%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], "
                "%s::integer[], %s::integer[], %s::text[], %s::text[], %s::text[]) "
                "ON CONFLICT DO NOTHING RETURNING site_id, event_id",
                _columns(
                    alarm_row(a, payload.decode(), test, received) for a, payload, test in alarms
                ),
            )
            payloads = conn.execute(
                "SELECT site_id, event_id, payload FROM alarms WHERE (site_id, event_id) "
                "IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                _columns((a.site_id, a.event_id) for a, _, _ in alarms),
            )
            gaps = conn.execute(
                "SELECT site_id, seq FROM gaps WHERE (site_id, seq) "
                "IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                _columns((a.site_id, a.seq) for a, _, _ in alarms),
            )
            results, opened, closed = _walk(
                alarms,
                set(inserted.fetchall()),
                {(site, event): text for site, event, text in payloads.fetchall()},
                {site: top for site, top in tops.fetchall() if top is not None},
                set(gaps.fetchall()),
            )
            if closed:
                conn.execute(
                    "DELETE FROM gaps WHERE (site_id, seq) "
                    "IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                    _columns(closed),
                )
            if opened:
                conn.execute(
                    "INSERT INTO gaps SELECT *, %s::text FROM unnest(%s::text[], %s::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    (received, *_columns(opened)),
                )
        return results

    def known_alarms(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        if not keys:
            return set()
        rows = self._query(
            "SELECT site_id, event_id FROM alarms WHERE (site_id, event_id) "
            "IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            _columns(keys),
        )
        return {(str(site), str(event)) for site, event in rows}

    def test_windows(self, sites: list[str]) -> dict[str, str]:
        rows = self._query(
            "SELECT site_id, test_until FROM sites WHERE site_id = ANY(%s) "
            "AND test_until IS NOT NULL",
            (sites,),
        )
        return {str(site): str(until) for site, until in rows}

    # --- what the two dialects write differently ------------------------------------------

    def _set_site(
        self, site_id: str, state: str, status: str, test_until: str | None, at: str
    ) -> bool:
        with self._tx(durable=False) as conn:
            row = conn.execute(
                "SELECT state FROM sites WHERE site_id = %s FOR UPDATE", (site_id,)
            ).fetchone()
            changed = row is None or row[0] != state
            conn.execute(
                "INSERT INTO sites VALUES (%s, %s, %s, %s, %s) ON CONFLICT (site_id) DO UPDATE "
                "SET state = EXCLUDED.state, status = EXCLUDED.status, test_until = "
                "EXCLUDED.test_until, changed_at = CASE WHEN sites.state = EXCLUDED.state THEN "
                "sites.changed_at ELSE EXCLUDED.changed_at END",
                (site_id, state, at, status, test_until),
            )
        return changed

    def _insert_clip(self, row: Row) -> bool:
        with self._tx() as conn:
            return (
                conn.execute(
                    "INSERT INTO clips (site_id, event_id, camera_id, path, segments, bytes, "
                    "sha256, manifest, written_at, verified, problem) VALUES (%s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    row,
                ).rowcount
                == 1
            )

    def _upsert_link(self, params: dict[str, Any]) -> None:
        with self._tx(durable=False) as conn:
            conn.execute(
                "INSERT INTO links AS l VALUES (%(receiver)s, %(link)s, %(up)s, %(at)s, %(lost)s, "
                "NULL, 0, %(error)s) ON CONFLICT (receiver, link) DO UPDATE SET up = %(up)s, "
                "since = %(at)s, last_error = %(error)s, "
                "lost_at = CASE WHEN l.up = 1 AND %(up)s = 0 AND %(outage)s THEN %(at)s "
                "ELSE l.lost_at END, "
                "regained_at = CASE WHEN %(up)s = 1 AND l.up = 0 THEN %(at)s "
                "ELSE l.regained_at END, "
                "outages = l.outages + CASE WHEN l.up = 1 AND %(up)s = 0 AND %(outage)s "
                "THEN 1 ELSE 0 END",
                params,
            )


def _pg(sql: str) -> str:
    """The shared queries' ``?`` parameters as psycopg's ``%s`` (none holds a literal ``?``
    or ``%``)."""
    return sql.replace("?", "%s")
