"""The centre's alarm desk: every school's alarms and statuses, stored once, none waiting long.

Threads (docs/architecture.md): the ``link-alarms`` thread (agent/centre_link.py) calls
:meth:`AlarmDesk.take` for each message. That does bounded work only: at most
``MAX_ALARM_BYTES`` parsed against the schema (agent/protocol.py), the result queued. The
``alarms`` thread stores each alarm (one ledger commit, one fsync of
``alarms.jsonl``), then publishes the receipt through the link. The queue is per site and
round-robin (agent/intake.py), so a flood from one box delays that box's own alarms and, for
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
from agent.centre.intake import Budget, FairQueue, Limits, Reporter
from agent.centre.ledger import Ledger
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


@dataclass(frozen=True, slots=True)
class _Item:
    payload: bytes
    alarm: Alarm | None = None
    status: Status | None = None


class AlarmDesk:
    """Create, :meth:`start`; feed with :meth:`take`; :meth:`stop` drains what is queued."""

    def __init__(self, store: Path, prefix: str, ledger: Ledger, reporter: Reporter,
                 limits: Limits, send: Send,
                 on_alarm: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._store, self._prefix, self._ledger = store, prefix, ledger
        self._reporter, self._send, self._on_alarm = reporter, send, on_alarm
        self._queue: FairQueue[_Item] = FairQueue(
            limits.alarm_queue_site, limits.alarm_queue_site * 8192, limits.alarm_queue_total,
            limits.alarm_queue_total * 8192)
        self._budget = Budget(limits.alarm_bytes_per_day / 86400, limits.alarm_burst_bytes)
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
        self._stopping.set()
        self._queue.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def drain(self) -> int:
        """Process, on the calling thread, everything queued now (tests; the thread not
        started). Returns how many."""
        done = 0
        while (got := self._queue.get(timeout=0)) is not None:
            self.process(*got)
            done += 1
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
            self._reporter.report(site, "queue_full", f"a {topic.kind} was not queued: too "
                                  "many wait already; not confirmed, so the box sends it again")

    # --- on the alarms thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not (self._stopping.is_set() and time.monotonic() > self._stop_by):
            got = self._queue.get(timeout=1.0)
            if got is not None:
                self.process(*got)
            elif self._stopping.is_set():
                return

    def process(self, site: str, item: _Item) -> None:
        """Store one queued alarm or status; never raises (the thread must go on)."""
        try:
            if item.alarm is not None:
                self._alarm(item.alarm, item.payload)
            elif item.status is not None:
                self._status(site, item.status, item.payload)
        except Exception as exc:  # a disk error: not confirmed, so the box sends it again
            log.exception("site %s: could not store a message: %s", site, exc)

    def _alarm(self, alarm: Alarm, payload: bytes) -> None:
        """Store a new alarm; a duplicate is confirmed again (the box is still waiting)."""
        site = alarm.site_id
        if not self._ledger.has_alarm(site, alarm.event_id) and not self._budget.take(
                site, len(payload)):
            self._reporter.report(site, "alarm_budget", "more new alarms than the centre stores "
                                  "for one site in a day; not confirmed, so the box sends them "
                                  "again later", logging.ERROR)
            return
        test = alarm.test and self._test_announced(alarm)
        stored = self._ledger.add_alarm(alarm, payload, test)
        if stored.differs:
            self._reporter.report(site, "alarm_changed", f"alarm {alarm.event_id} came again "
                                  "with different content; the first copy is kept")
        if stored.new:
            record = json.loads(payload)
            record["test"] = test
            if alarm.test and not test:
                record["test_refused"] = "the site did not announce a walk test"
            with open(self._store / "alarms.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            log.warning("ALARM site=%s button=%s location=%r kind=%s seq=%d at=%s%s", site,
                        alarm.button_id, alarm.location, alarm.kind, alarm.seq, alarm.pressed_at,
                        " (TEST)" if test else "")
            if alarm.test and not test:
                self._reporter.report(site, "test_not_announced", f"alarm {alarm.event_id} is "
                                      "flagged test, but the site did not announce a walk test "
                                      "in its status: treated as a REAL alarm", logging.ERROR)
            if stored.gap_opened:
                log.error("site %s: alarms seq %d..%d are missing so far", site,
                          *stored.gap_opened)
            if stored.gap_closed:
                log.info("site %s: missing alarm seq %d arrived", site, alarm.seq)
            if self._on_alarm is not None:
                self._on_alarm(record)
        self._send(Topics(self._prefix, site).receipt,
                   Receipt(alarms=(alarm.event_id,)).to_json())

    def _test_announced(self, alarm: Alarm) -> bool:
        """A box may flag an alarm as a walk test only inside the test window its retained
        status announced (``test_mode_until``, the box's clock like ``pressed_at``)."""
        until = parse_rfc3339(self._ledger.test_until(alarm.site_id))
        pressed = parse_rfc3339(alarm.pressed_at)
        return until is not None and pressed is not None and pressed <= until

    def _status(self, site: str, status: Status, payload: bytes) -> None:
        """Record the site's state, and the walk-test window it announces: an online status
        sets it (at most MAX_TEST_MODE_S long), one without a window ends it at its ``at``, so
        test alarms the box queued during the window still count as tests."""
        until = self._ledger.test_until(site)
        if status.state == "online":
            at = parse_rfc3339(status.at)
            assert at is not None  # checked by the schema
            if status.test_mode_until is not None:
                until = status.test_mode_until
                if (parse_rfc3339(until) or 0.0) > at + MAX_TEST_MODE_S:
                    until = rfc3339(at + MAX_TEST_MODE_S)
                    self._reporter.report(site, "test_too_long", "announced a walk test longer "
                                          f"than {MAX_TEST_MODE_S // 60} minutes; cut to "
                                          f"{until}")
            elif until is not None and (parse_rfc3339(until) or 0.0) > at:
                until = status.at
        testing = status.state == "online" and status.test_mode_until is not None
        if self._ledger.site_status(site, status.state, payload.decode(), until) or testing:
            log.info("site %s is %s (%s)%s", site, status.state, status.reason,
                     f"; walk test announced until {until}" if testing else "")
