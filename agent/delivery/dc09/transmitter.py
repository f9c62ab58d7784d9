"""The DC-09 path: one supervised thread that drains its queue to the receivers, in order.

Per message, as DC-09 asks:

- A new message takes the next sequence number; each attempt carries the current time
  (corrected by the receiver's clock offset) and waits ``ack_timeout_s`` for the answer.
- ACK (or RSP): done. NAK: take the receiver's clock from the NAK's timestamp (our offset to
  it, per receiver) and resend at once with the same number. DUH: the receiver will never take
  this message; it is refused (kept visible, not resent) and the queue moves on.
- No answer, a broken connection or an invalid reply: resend, ``attempts`` times per receiver,
  then the next receiver (primary, then backups). When every receiver has failed, the path is
  down: pause (the code base's one backoff, agent/backoff.py: doubling from ``ack_timeout_s``
  up to ``retry_max_s``, equal jitter; a new event cuts the pause short) and start again with
  the primary. Nothing is dropped: the event stays first in the queue.
- After a fallback the backup stays in use, and the primary is tried first again once
  ``supervision_s`` has passed since it failed.

Supervision: when nothing has been acknowledged for ``supervision_s``, a NULL message polls
the path; ``test_report_s`` sends a periodic test report the same way, when ``periodic_test``
is among the settings' events (neither is queued: a late poll is no use, and the next one
comes). The path is reported down (one log line,
``on_path(False, why)``) when a whole round of receivers fails, and up at the next ACK. The
receiver's side detects a silent box by the missing polls.

Threading: the loop is ``_run`` under agent/supervision.py's rule (beats at least every
second, waits cut into slices). Every field below is touched only by that thread, except what
``status()`` reads and ``wake()`` sets: ``_lock`` guards the receiver states and path fields.
"""

from __future__ import annotations

import enum
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from agent.backoff import Backoff
from agent.delivery.dc09.events import NULL, Event, EventKind, Message, encode
from agent.delivery.dc09.frame import Address, FrameError, ReplyKind, build, next_seq
from agent.delivery.dc09.link import Link, LinkError, Pulse
from agent.delivery.dc09.queue import EventQueue
from agent.delivery.dc09.settings import Settings
from agent.supervision import Supervisor, Worker

log = logging.getLogger("agent.dc09")

Clock = Callable[[], float]


class Outcome(enum.Enum):
    ACKED = "acked"
    REFUSED = "refused"  # DUH
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ReceiverStatus:
    name: str
    last_ack_at: float | None = None  # wall time
    failures: int = 0  # failed attempts since the last ACK
    total_failures: int = 0
    last_error: str = ""  # the last failed attempt, starting with the receiver's name
    clock_offset_s: float = 0.0  # the receiver's clock minus ours, from its last NAK
    failed_round_at: float | None = None  # monotonic: when it last failed a whole round


@dataclass(frozen=True, slots=True)
class Status:
    """For status and health: the path, its queue, each receiver."""

    path_ok: bool | None  # None until the first exchange
    active: str  # the receiver in use
    queue_depth: int
    acked: int
    refused: int
    receivers: tuple[ReceiverStatus, ...]


class Transmitter:
    """Nothing happens until :meth:`start`; the constructor does no I/O."""

    def __init__(
        self,
        settings: Settings,
        queue: EventQueue,
        *,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        on_path: Callable[[bool, str], None] | None = None,
        first_seq: int | None = None,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._clock = clock
        self._wall = wall
        self._on_path = on_path  # called on the transmitter's thread: keep it short
        # A random first number after a restart: a receiver that drops repeats by number
        # must not take our first messages for ones it saw before the restart.
        self._seq = (first_seq if first_seq is not None else secrets.randbelow(9999) + 1) - 1
        self._links = [Link(r) for r in settings.receivers]
        self._wakeup = threading.Event()
        self._worker: Worker | None = None
        self._lock = threading.Lock()  # guards _states, _path_ok, _active, _counts
        self._states = [ReceiverStatus(r.name) for r in settings.receivers]
        self._path_ok: bool | None = None
        self._active = 0
        self._acked = self._refused = 0
        # After a failed round: doubling from one ACK timeout up to retry_max_s, jittered so
        # that a region's boxes do not come back to a restarted receiver as one wave.
        self._backoff = Backoff(base_s=settings.ack_timeout_s, cap_s=settings.retry_max_s)
        self._next_poll = 0.0  # monotonic: NULL poll due
        self._next_test = float("inf")  # monotonic: periodic test report due
        self._retry_at = 0.0  # monotonic: after a failed poll, neither is sent before this

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, supervisor: Supervisor) -> None:
        self._worker = supervisor.spawn("dc09", self._run, wake=self.wake)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()

    def wake(self) -> None:
        """A new event is in the queue (any thread): send it now, even during a pause."""
        self._wakeup.set()

    def status(self) -> Status:
        with self._lock:
            return Status(
                self._path_ok,
                self._settings.receivers[self._active].name,
                self._queue.depth(),
                self._acked,
                self._refused,
                tuple(self._states),
            )

    # --- the thread -------------------------------------------------------------------------

    def _run(self, worker: Worker) -> None:
        now = self._clock()
        self._next_poll = now  # a restart proves the path at once
        s = self._settings
        if s.test_report_s is not None and EventKind.PERIODIC_TEST in s.events:
            self._next_test = now + s.test_report_s
        try:
            while not worker.stopping.is_set():
                worker.beat()
                self._wakeup.clear()
                item = self._queue.next_event()
                if item is not None:
                    self._deliver(item.id, item.event, worker)
                    continue
                now = self._clock()
                due = max(self._retry_at, min(self._next_poll, self._next_test))
                if now < due:
                    self._wakeup.wait(min(1.0, due - now))
                elif now >= self._next_test:
                    self._supervise(Event(EventKind.PERIODIC_TEST, 0), worker)
                else:
                    self._supervise(None, worker)
        finally:
            for link in self._links:
                link.close()

    def _deliver(self, event_id: int, event: Event, worker: Worker) -> None:
        started = self._clock()
        outcome, name, seq = self._send(
            lambda acct: encode(event, self._settings.format, acct), worker
        )
        took_ms = (self._clock() - started) * 1000
        if outcome is Outcome.ACKED:
            self._queue.acked(event_id)
            with self._lock:
                self._acked += 1
            log.info(
                "dc09: %s zone %d (seq %04d) acknowledged by %s in %.0f ms",
                event.kind,
                event.zone,
                seq,
                name,
                took_ms,
            )
        elif outcome is Outcome.REFUSED:
            reason = (
                f"{name} answered DUH to {event.kind} zone {event.zone}: it does not "
                "handle this event; check the centre's receiver set-up (docs/dc09.md)"
            )
            self._queue.refused(event_id, reason)
            with self._lock:
                self._refused += 1
            log.error("dc09: %s", reason)
        elif not worker.stopping.is_set():
            self._pause(worker)

    def _supervise(self, event: Event | None, worker: Worker) -> None:
        """A NULL poll (``event`` None) or a periodic test report."""
        if event is None:
            outcome, _, _ = self._send(lambda _acct: NULL, worker)
        else:
            outcome, name, seq = self._send(
                lambda acct: encode(event, self._settings.format, acct), worker
            )
            if outcome is Outcome.ACKED:
                log.info("dc09: periodic test report (seq %04d) acknowledged by %s", seq, name)
        now = self._clock()
        if outcome is Outcome.FAILED:
            self._retry_at = now + self._backoff.next_delay()
        elif event is not None:
            assert self._settings.test_report_s is not None
            self._next_test = now + self._settings.test_report_s

    # --- one message to the receivers --------------------------------------------------------

    def _send(self, make: Callable[[str], Message], worker: Worker) -> tuple[Outcome, str, int]:
        """Primary first (if due), then the rest in order; the outcome, receiver and seq."""
        n = len(self._links)
        first = self._active
        primary = self._states[0].failed_round_at
        if primary is None or self._clock() - primary >= self._settings.supervision_s:
            first = 0
        seq = 0
        errors = []
        for idx in [(first + i) % n for i in range(n)]:
            outcome, seq = self._try(idx, make(self._settings.receivers[idx].account), worker)
            name = self._settings.receivers[idx].name
            if outcome is not Outcome.FAILED:
                self._up(idx)
                return outcome, name, seq
            errors.append(self._states[idx].last_error)
            if worker.stopping.is_set():
                break
        else:
            self._down("; ".join(errors))
        return Outcome.FAILED, "", seq

    def _try(self, idx: int, message: Message, pulse: Pulse) -> tuple[Outcome, int]:
        receiver, link = self._settings.receivers[idx], self._links[idx]
        address = Address(receiver.account, receiver.receiver, receiver.line)
        self._seq = seq = next_seq(self._seq)
        # Between attempts after a refused or broken connection (which fail at once): short,
        # under the beat interval, so a round is not a busy loop.
        between = Backoff(base_s=0.1, cap_s=0.5)
        for _ in range(self._settings.attempts):
            if pulse.stopping.is_set():
                break
            pulse.beat()
            frame = build(
                message.token,
                seq,
                address,
                message.data,
                extended=message.extended,
                sent_at=self._wall() + self._states[idx].clock_offset_s,
                key=receiver.key,
            )
            try:
                reply = link.exchange(frame, seq, self._settings.ack_timeout_s, pulse)
            except (LinkError, FrameError) as exc:
                link.close()
                self._failed(idx, str(exc))
                pulse.stopping.wait(between.next_delay())
                continue
            if reply is None:
                link.close()  # a TCP stream that lost a reply is no longer in step
                self._failed(
                    idx, f"{receiver.name}: no answer within {self._settings.ack_timeout_s:g} s"
                )
                continue
            if reply.kind is ReplyKind.NAK:
                assert reply.timestamp is not None  # parse_reply demands it in a NAK
                offset = reply.timestamp - self._wall()
                if abs(offset - self._states[idx].clock_offset_s) > 1.5:  # else: not the clock
                    log.warning(
                        "dc09: %s sent NAK to %s %04d: resending with its clock (offset %+.0f s)",
                        receiver.name,
                        message.token,
                        seq,
                        offset,
                    )
                self._failed(
                    idx,
                    f"{receiver.name}: NAK (its clock {offset:+.0f} s from ours)",
                    offset=offset,
                )
                continue
            if reply.kind is ReplyKind.DUH:
                return Outcome.REFUSED, seq
            with self._lock:
                self._states[idx] = replace(self._states[idx], last_ack_at=self._wall(), failures=0)
            return Outcome.ACKED, seq
        with self._lock:
            self._states[idx] = replace(self._states[idx], failed_round_at=self._clock())
        return Outcome.FAILED, seq

    # --- state ------------------------------------------------------------------------------

    def _failed(self, idx: int, error: str, offset: float | None = None) -> None:
        log.debug("dc09: attempt on %s failed: %s", self._settings.receivers[idx].name, error)
        with self._lock:
            s = self._states[idx]
            self._states[idx] = replace(
                s,
                failures=s.failures + 1,
                total_failures=s.total_failures + 1,
                last_error=error,
                clock_offset_s=s.clock_offset_s if offset is None else offset,
            )

    def _up(self, idx: int) -> None:
        self._backoff.reset()
        self._retry_at = 0.0
        self._next_poll = self._clock() + self._settings.supervision_s
        with self._lock:
            was, self._path_ok = self._path_ok, True
            moved, self._active = self._active != idx, idx
        name = self._settings.receivers[idx].name
        if moved:
            log.warning(
                "dc09: now sending to %s (%s)", name, "the primary" if idx == 0 else f"backup {idx}"
            )
        if was is not True:
            if was is False:
                log.warning("dc09: path restored via %s", name)
            if self._on_path is not None:
                self._on_path(True, name)

    def _down(self, why: str) -> None:
        with self._lock:
            was, self._path_ok = self._path_ok, False
        if was is not False:
            log.error("dc09: path down, no receiver answers (events wait in the queue): %s", why)
            if self._on_path is not None:
                self._on_path(False, why)

    def _pause(self, pulse: Pulse) -> None:
        """After a failed round with events waiting: until the pause ends or a new event."""
        deadline = self._clock() + self._backoff.next_delay()
        while not pulse.stopping.is_set() and (left := deadline - self._clock()) > 0:
            pulse.beat()
            if self._wakeup.wait(min(left, 1.0)):
                return
