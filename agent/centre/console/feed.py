"""The ``console-feed`` thread: turns what the receiver stores into events for every console.

The receiver is another process (it must not hold the signing key), possibly on another machine
with the ledger shared, so the console learns of a new alarm from the ledger itself. In SQLite
it looks for rows after the last one it saw every POLL_S (an index lookup on the newest rowid,
well under a millisecond); in PostgreSQL the ledger notifies each new row at its commit
(records.py). Each new alarm is pushed to every open console at once: the browser never polls,
and the officer sees an alarm within POLL_S of the receiver's commit plus the push
(bench/console.py measures press to screen). Sites are compared every SITES_S; a box's health
is pushed as it arrives (boxes.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from agent.centre.console.database import Database
from agent.centre.console.hub import Hub
from agent.centre.console.records import LedgerReader, alarm_view

log = logging.getLogger("agent.console")

POLL_S = 0.05
SITES_S = 0.5


class Feed:
    def __init__(
        self, ledger: LedgerReader, db: Database, hub: Hub, registered: Iterable[str] = ()
    ) -> None:
        self._ledger, self._db, self._hub = ledger, db, hub
        self._lock = threading.Lock()  # guards _sites and _health (feed and link threads)
        # Every site of the schools file is on the board, "unknown" until its box is heard from
        self._sites: dict[str, dict[str, Any]] = {site: _unknown(site) for site in registered}
        self._health: dict[str, dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._poll_sites()
        self._thread = threading.Thread(target=self._run, name="console-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)

    def snapshot(self) -> dict[str, Any]:
        """Everything a console shows, for one that (re)connects."""
        with self._lock:
            sites = [self._site_view(site) for site in sorted(self._sites)]
        return {
            "alarms": [alarm_view(r, self._db, self._ledger) for r in self._ledger.newest_alarms()],
            "sites": sites,
        }

    def on_health(self, site: str, health: dict[str, Any]) -> None:
        """A box's health arrived (the link's thread)."""
        with self._lock:
            self._health[site] = health
            view = self._site_view(site)
        self._hub.publish("site", view)

    # --- the feed thread --------------------------------------------------------------------

    def _run(self) -> None:
        sites_due = time.monotonic() + SITES_S
        while not self._stopping.is_set():
            try:
                self._publish(*self._ledger.changes(POLL_S))
                for site, event in self._db.changes():  # another console's acknowledgement
                    row = self._ledger.alarm(site, event)
                    if row is not None:
                        self._hub.publish("alarm", alarm_view(row, self._db, self._ledger))
                if time.monotonic() >= sites_due:
                    sites_due = time.monotonic() + SITES_S
                    for view in self._poll_sites():
                        self._hub.publish("site", view)
            except Exception:  # the ledger is busy or being replaced: try again next turn
                log.exception("console feed: cannot read the ledger; retrying")
                self._stopping.wait(POLL_S)

    def _publish(
        self, alarms: list[tuple[Any, ...]], clips: list[tuple[int, str, str, str]]
    ) -> None:
        for row in alarms:
            self._hub.publish("alarm", alarm_view(row, self._db, self._ledger))
        for _id, site, event, camera in clips:
            alarm = self._ledger.alarm(site, event)
            if alarm is not None:  # an alarm's clip: the alarm, with its clips, again
                self._hub.publish("alarm", alarm_view(alarm, self._db, self._ledger))
            else:  # a fetched window of a school's video
                self._hub.publish("clip", {"site_id": site, "event_id": event, "camera_id": camera})

    def _poll_sites(self) -> list[dict[str, Any]]:
        """Refresh each site's state from the ledger; return the views that changed."""
        changed = []
        with self._lock:
            for site, state, since, test_until in self._ledger.sites():
                known = self._sites.get(site, {})
                if (known.get("state"), known.get("since"), known.get("test_until")) != (
                    state,
                    since,
                    test_until,
                ):
                    self._sites[site] = {
                        "site_id": site,
                        "state": state,
                        "since": since,
                        "test_until": test_until,
                    }
                    changed.append(self._site_view(site))
        return changed

    def _site_view(self, site: str) -> dict[str, Any]:
        """Under the lock: a site's state with its latest health."""
        base = self._sites.get(site, _unknown(site))
        view = dict(base)
        view["health"] = self._health.get(site)
        self._sites[site] = base
        return view


def _unknown(site: str) -> dict[str, Any]:
    return {"site_id": site, "state": "unknown", "since": None, "test_until": None}
