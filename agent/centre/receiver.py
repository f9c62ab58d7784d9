"""The centre's alarm desk: every school's alarms and statuses, stored once, none waiting long.

Threads (docs/architecture.md): the ``link-alarms`` thread (agent/centre/link.py) calls
:meth:`AlarmDesk.take` for each message. That does bounded work only: at most
``MAX_ALARM_BYTES`` parsed against the schema (agent/delivery/protocol.py), the result queued. The
``alarms`` thread takes what waits (at most GROUP_MAX) and stores the alarms among it together
(group commit: one ledger commit and one fsync of ``alarms.jsonl`` for all), then publishes
their receipts through the link, one per site: during an alarm storm the disk's flush time is
shared instead of queued (bench/alarm_storm.py). The queue is per site and
round-robin (agent/centre/intake.py), so a flood from one box delays that box's own alarms and, for
any other school, at most one stored alarm of each busy site. Video never reaches this thread.
What one site's new alarms may take on disk is budgeted (``Limits.alarm_bytes_per_day``, after
a burst); duplicates cost nothing of it.

Statuses go through the same per-site queue as alarms, so a site's walk-test announcement is
applied before the alarms the box sent after it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.box.walktest import MAX_MINUTES
from agent.centre.intake import Budget, FairQueue, Limits, Reporter, end_worker
from agent.centre.ledgerrecords import Stored
from agent.centre.ledgerstore import LedgerStore
from agent.clock import parse_rfc3339, rfc3339
from agent.delivery.protocol import (
    Alarm,
    BoxTopic,
    Receipt,
    Status,
    Topics,
    parse_alarm,
    parse_status,
)
from agent.errors import ProtocolError

log = logging.getLogger("agent.centre")

MAX_TEST_MODE_S = MAX_MINUTES * 60  # the longest walk test a box runs (agent/box/walktest.py)

Send = Callable[[str, bytes], None]  # publish (topic, payload) on the alarm link
# Alarms stored in one transaction at most (group commit). One fsync costs the same for one
# alarm as for hundreds; 1 stores them one fsync at a time, as before (bench/alarm_storm.py).
GROUP_MAX = 256


@dataclass(frozen=True, slots=True)
class _Item:
    payload: bytes
    alarm: Alarm | None = None
    status: Status | None = None


def _inside(pressed_at: str, test_until: str | None) -> bool:
    """A box may flag an alarm as a walk test only inside the test window its retained status
    announced (``test_mode_until``, the box's clock like ``pressed_at``)."""
    until, pressed = parse_rfc3339(test_until), parse_rfc3339(pressed_at)
    return until is not None and pressed is not None and pressed <= until


class AlarmDesk:
    """Create, :meth:`start`; feed with :meth:`take`; :meth:`stop` drains what is queued."""

    def __init__(
        self,
        store: Path,
        prefix: str,
        ledger: LedgerStore,
        reporter: Reporter,
        limits: Limits,
        send: Send,
        on_alarm: Callable[[dict[str, Any]], None] | None = None,
        group_max: int = GROUP_MAX,
    ) -> None:
        self._store, self._prefix, self._ledger = store, prefix, ledger
        self._reporter, self._send, self._on_alarm = reporter, send, on_alarm
        self._queue: FairQueue[_Item] = FairQueue(
            limits.alarm_queue_site,
            limits.alarm_queue_site * 8192,
            limits.alarm_queue_total,
            limits.alarm_queue_total * 8192,
        )
        self._budget = Budget(limits.alarm_bytes_per_day / 86400, limits.alarm_burst_bytes)
        self._group_max = group_max
        self._stopping = threading.Event()
        self._stop_by = 0.0  # set by stop(): the queue is drained until then
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alarms", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Store what is queued, for up to ``timeout``; the rest is not confirmed, so the boxes
        send it again when a receiver is back. False if the thread is still busy."""
        self._stop_by = time.monotonic() + timeout - 0.5
        return end_worker(self._thread, self._stopping, self._queue, timeout)

    def drain(self) -> int:
        """Process, on the calling thread, everything queued now (tests; the thread not
        started). Returns how many."""
        done = 0
        while batch := self._batch(timeout=0):
            self.process(batch)
            done += len(batch)
        return done

    # --- on the link's thread: bounded checks, then the queue -------------------------------

    def take(self, topic: BoxTopic, payload: bytes) -> None:
        site = topic.site
        try:
            if topic.kind == "alarm":
                alarm = parse_alarm(payload)
                if alarm.site_id != site:
                    raise ProtocolError(f"an alarm of site {alarm.site_id} on the topic of {site}")
                item = _Item(payload, alarm=alarm)
            elif topic.kind == "status" and payload:  # an empty retained message clears
                status = parse_status(payload)
                if status.site_id != site:
                    raise ProtocolError(f"a status of {status.site_id} on the topic of {site}")
                item = _Item(payload, status=status)
            else:
                return
        except ProtocolError as exc:
            self._reporter.report(site, "refused", f"{topic.kind}: {exc}")
            return
        if not self._queue.put(site, item, len(payload)):
            self._reporter.report(
                site,
                "queue_full",
                f"a {topic.kind} was not queued: too "
                "many wait already; not confirmed, so the box sends it again",
            )

    # --- on the alarms thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not (self._stopping.is_set() and time.monotonic() > self._stop_by):
            batch = self._batch(timeout=1.0)
            if batch:
                self.process(batch)
            elif self._stopping.is_set():
                return

    def _batch(self, timeout: float) -> list[tuple[str, _Item]]:
        """The next message, and whatever else waits already (at most GROUP_MAX)."""
        got = self._queue.get(timeout=timeout)
        batch = [got] if got is not None else []
        while got is not None and len(batch) < self._group_max:
            if (got := self._queue.get(timeout=0)) is not None:
                batch.append(got)
        return batch

    def process(self, batch: list[tuple[str, _Item]]) -> None:
        """Store queued alarms and statuses in their order; never raises (the thread must go
        on). Consecutive alarms are stored together (group commit); a status is applied
        between them, so a walk-test window counts from where the box put it."""
        group: list[_Item] = []
        for site, item in [*batch, ("", _Item(b""))]:  # the sentinel flushes the last group
            if item.alarm is not None:
                group.append(item)
                continue
            if group:
                sites = sorted({i.alarm.site_id for i in group if i.alarm is not None})
                self._guarded(", ".join(sites[:5]), self._alarms, group)
                group = []
            if item.status is not None:
                self._guarded(site, self._status, site, item.status, item.payload)

    def _guarded(self, site: str, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:  # a disk error: not confirmed, so the box sends it again
            log.exception("site %s: could not store a message: %s", site, exc)

    def _alarms(self, items: list[_Item]) -> None:
        """Store alarms that arrived together: one ledger transaction and one fsync of
        ``alarms.jsonl`` for all of them, before any receipt; a duplicate is confirmed again
        (the box is still waiting)."""
        alarms = [item.alarm for item in items if item.alarm is not None]
        known = self._ledger.known_alarms([(a.site_id, a.event_id) for a in alarms])
        windows = self._ledger.test_windows(sorted({a.site_id for a in alarms if a.test}))
        entries: list[tuple[Alarm, bytes, bool]] = []
        for item in items:
            alarm = item.alarm
            assert alarm is not None
            site = alarm.site_id
            if (site, alarm.event_id) not in known and not self._budget.take(
                site, len(item.payload)
            ):
                self._reporter.report(
                    site,
                    "alarm_budget",
                    "more new alarms than the centre "
                    "stores for one site in a day; not confirmed, so the box "
                    "sends them again later",
                    logging.ERROR,
                )
                continue
            test = alarm.test and _inside(alarm.pressed_at, windows.get(site))
            entries.append((alarm, item.payload, test))
        if not entries:
            return
        results = self._ledger.add_alarms(entries)
        records = []
        for (alarm, payload, test), stored in zip(entries, results, strict=True):
            if stored.differs:
                self._reporter.report(
                    alarm.site_id,
                    "alarm_changed",
                    f"alarm {alarm.event_id} "
                    "came again with different content; the first copy is kept",
                )
            if stored.new:
                record = json.loads(payload)
                record["test"] = test
                if alarm.test and not test:
                    record["test_refused"] = "the site did not announce a walk test"
                records.append(record)
        if records:
            with open(self._store / "alarms.jsonl", "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                f.flush()
                os.fsync(f.fileno())
        confirmed: dict[str, list[str]] = {}
        for alarm, _payload, _test in entries:
            confirmed.setdefault(alarm.site_id, []).append(alarm.event_id)
        for site, events in confirmed.items():  # first: the schools wait for them
            self._send(Topics(self._prefix, site).receipt, Receipt(alarms=tuple(events)).to_json())
        for (alarm, _payload, test), stored in zip(entries, results, strict=True):
            if stored.new:  # a log line each (a storm's hundreds took 0.5 s before receipts)
                self._announce(alarm, test, stored)
        if self._on_alarm is not None:
            for record in records:
                self._on_alarm(record)

    def _announce(self, alarm: Alarm, test: bool, stored: Stored) -> None:
        """The log lines and reports of a new alarm, once it is on disk."""
        site = alarm.site_id
        log.warning(
            "ALARM site=%s button=%s location=%r kind=%s seq=%d at=%s%s",
            site,
            alarm.button_id,
            alarm.location,
            alarm.kind,
            alarm.seq,
            alarm.pressed_at,
            " (TEST)" if test else "",
        )
        if alarm.test and not test:
            self._reporter.report(
                site,
                "test_not_announced",
                f"alarm {alarm.event_id} is "
                "flagged test, but the site did not announce a walk test "
                "in its status: treated as a REAL alarm",
                logging.ERROR,
            )
        if stored.gap_opened:
            log.error("site %s: alarms seq %d..%d are missing so far", site, *stored.gap_opened)
        if stored.gap_closed:
            log.info("site %s: missing alarm seq %d arrived", site, alarm.seq)

    def _status(self, site: str, status: Status, payload: bytes) -> None:
        """Record the site's state, and the walk-test window it announces: an online status
        sets it (at most MAX_TEST_MODE_S long), one without a window ends it at its ``at``, so
        test alarms the box queued during the window still count as tests."""
        until = self._ledger.test_windows([site]).get(site)
        if status.state == "online":
            at = parse_rfc3339(status.at)
            assert at is not None  # checked by the schema
            if status.test_mode_until is not None:
                until = status.test_mode_until
                if (parse_rfc3339(until) or 0.0) > at + MAX_TEST_MODE_S:
                    until = rfc3339(at + MAX_TEST_MODE_S)
                    self._reporter.report(
                        site,
                        "test_too_long",
                        "announced a walk test longer "
                        f"than {MAX_TEST_MODE_S // 60} minutes; cut to "
                        f"{until}",
                    )
            elif until is not None and (parse_rfc3339(until) or 0.0) > at:
                until = status.at
        testing = status.state == "online" and status.test_mode_until is not None
        if self._ledger.site_status(site, status.state, payload.decode(), until) or testing:
            log.info(
                "site %s is %s (%s)%s",
                site,
                status.state,
                status.reason,
                f"; walk test announced until {until}" if testing else "",
            )
