"""What every ledger of the centre is: :class:`LedgerStore`, the methods the receiver, its video
path, its reports and the commands use, on SQLite (agent/centre/ledger.py: one centre machine)
or PostgreSQL (agent/centre/pgledger.py: several receivers and consoles).

The queries that read the same in both dialects are here, written with ``?`` parameters as
sqlite3 takes them (the PostgreSQL back end turns them into psycopg's, as the console's
database does), and so are the record shapes and the rules (agent/centre/ledgerrecords.py).
Each back end writes what its dialect says differently (inserts that may conflict, upserts)
and owns its connection and its transactions: alarms and clips flushed before they count,
bookkeeping (site states, reports, links) not.
"""

from __future__ import annotations

import abc
import json
import threading
from pathlib import Path
from typing import Any

from agent.centre.ledgerrecords import (
    REPORTS_PER_SITE,
    ClipRecord,
    LinkState,
    Report,
    Row,
    Statement,
    Stored,
    stamp,
)
from agent.delivery.protocol import Alarm


class LedgerStore(abc.ABC):
    """The ledger's methods, on either back end. One connection per ledger, shared by the
    receiver's threads (alarms, video, links) and the commands beside it."""

    def __init__(self) -> None:
        # Guards the back end's connection: one short transaction at a time, never held while
        # calling out of the ledger.
        self._lock = threading.Lock()

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- alarms ---------------------------------------------------------------------------

    def add_alarm(
        self, alarm: Alarm, payload: bytes, test: bool, now: float | None = None
    ) -> Stored:
        """Store an alarm once per (site, event), with the centre's ``test`` decision; find
        the gap it opens in its site's seq, or the gap it fills."""
        return self.add_alarms([(alarm, payload, test)], now)[0]

    @abc.abstractmethod
    def add_alarms(
        self, alarms: list[tuple[Alarm, bytes, bool]], now: float | None = None
    ) -> list[Stored]:
        """:meth:`add_alarm` for alarms that arrived together, in one transaction: one flush
        for all of them (group commit: agent/centre/receiver.py)."""

    @abc.abstractmethod
    def known_alarms(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (site, event) are stored already: one call for a group (the
        PostgreSQL ledger answers it in one round trip)."""

    def sites_of(self, event_id: str) -> list[str]:
        """Every site that has an alarm with this event id (one, unless a box copied it)."""
        rows = self._rows(
            "SELECT site_id FROM alarms WHERE event_id = ? ORDER BY site_id", (event_id,)
        )
        return [str(r[0]) for r in rows]

    def received(self) -> dict[tuple[str, str], str]:
        """When the centre stored each alarm: (site, event id) -> received_at."""
        rows = self._rows("SELECT site_id, event_id, received_at FROM alarms")
        return {(str(a), str(b)): str(c) for a, b, c in rows}

    def alarms(self, site_id: str | None = None) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT payload FROM alarms"
            + (" WHERE site_id = ?" if site_id else "")
            + " ORDER BY site_id, seq",
            (site_id,) if site_id else (),
        )
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
        return self._set_site(site_id, state, status, test_until, stamp(now))

    @abc.abstractmethod
    def test_windows(self, sites: list[str]) -> dict[str, str]:
        """The end of the walk test each site announced last (its box's clock), for the sites
        that announced one."""

    def sites(self) -> list[tuple[str, str, str]]:
        rows = self._rows("SELECT site_id, state, changed_at FROM sites ORDER BY site_id")
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def gaps(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for site, seq in self._rows("SELECT site_id, seq FROM gaps ORDER BY site_id, seq"):
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
        return self._insert_clip(
            (
                site_id,
                event_id,
                camera_id,
                str(path),
                len(manifest),
                size,
                sha256,
                json.dumps(manifest),
                stamp(None),
                int(not problem),
                problem,
            )
        )

    def clip(self, site_id: str, event_id: str, camera_id: str) -> ClipRecord | None:
        rows = self._rows(
            "SELECT path, sha256, manifest, problem FROM clips WHERE site_id = ? AND "
            "event_id = ? AND camera_id = ?",
            (site_id, event_id, camera_id),
        )
        if not rows:
            return None
        path, sha256, manifest, problem = rows[0]
        return ClipRecord(str(path), str(sha256), tuple(json.loads(manifest)), str(problem))

    def clip_problem(self, site_id: str, event_id: str, camera_id: str) -> str | None:
        """ "" for a verified clip, the reason for one that failed, None if there is none."""
        record = self.clip(site_id, event_id, camera_id)
        return None if record is None else record.problem

    # --- what the centre noticed ----------------------------------------------------------

    def report(self, site_id: str, what: str, detail: str, now: float | None = None) -> None:
        """Record something the operator must see about a site; its newest reports are kept."""
        self._bookkeep(
            (
                "INSERT INTO reports (site_id, at, what, detail) VALUES (?, ?, ?, ?)",
                (site_id, stamp(now), what, detail),
            ),
            (
                "DELETE FROM reports WHERE site_id = ? AND id <= (SELECT id FROM reports "
                "WHERE site_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (site_id, site_id, REPORTS_PER_SITE),
            ),
        )

    def reports(self, site_id: str | None = None, newest: int = 50) -> list[Report]:
        """The newest reports (of one site), oldest first."""
        rows = self._rows(
            "SELECT site_id, at, what, detail FROM reports"
            + (" WHERE site_id = ?" if site_id else "")
            + " ORDER BY id DESC LIMIT ?",
            (site_id, newest) if site_id else (newest,),
        )
        return [Report(*map(str, row)) for row in reversed(rows)]

    # --- the receivers' own connections ---------------------------------------------------

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
        at = stamp(now)
        self._upsert_link(
            {
                "receiver": receiver,
                "link": link,
                "up": int(up),
                "at": at,
                "lost": None if up else at,
                "error": error,
                "outage": outage,
            }
        )

    def links(self) -> list[LinkState]:
        rows = self._rows(
            "SELECT receiver, link, up, since, lost_at, regained_at, outages, last_error "
            "FROM links ORDER BY receiver, link"
        )
        return [
            LinkState(str(r[0]), str(r[1]), bool(r[2]), str(r[3]), r[4], r[5], int(r[6]), str(r[7]))
            for r in rows
        ]

    # --- what each back end writes in its own way -----------------------------------------

    @abc.abstractmethod
    def _rows(self, sql: str, params: Row = ()) -> list[Row]:
        """The rows of one query (``?`` parameters), under the lock."""

    @abc.abstractmethod
    def _bookkeep(self, *statements: Statement) -> None:
        """Run ``statements`` (``?`` parameters) in one transaction without a flush of its
        own: for what is only shown or soon sent again, so a box that floods valid statuses
        costs the alarm thread no flush. The next alarm's commit makes it durable."""

    @abc.abstractmethod
    def _set_site(
        self, site_id: str, state: str, status: str, test_until: str | None, at: str
    ) -> bool:
        """:meth:`site_status`, as bookkeeping; ``changed_at`` moves only with the state."""

    @abc.abstractmethod
    def _insert_clip(self, row: Row) -> bool:
        """Insert a clip's row (the clips table's columns) unless one is there; durable."""

    @abc.abstractmethod
    def _upsert_link(self, params: dict[str, Any]) -> None:
        """:meth:`link_changed`'s row, as bookkeeping: ``lost_at``, ``regained_at`` and
        ``outages`` move only when ``up`` changes (an outage only if ``outage``)."""
