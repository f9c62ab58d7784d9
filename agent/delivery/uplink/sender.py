"""What the uplink hands paho on each turn of its loop, and what the broker's PUBACKs settle.

The in-flight table lives here: paho message id -> (outbox row, class). It is in memory only,
so a crash or a lost connection leaves every row READY, and the next connection sends it
again with the same id (the centre drops the duplicate).

Priorities: paho is handed only a small window of non-alarm messages at a time (pacing.py), so
an alarm that arrives while megabytes of clips wait goes out in the next select() turn. Alarms
are never held back by the window.

Uplink thread only (agent/delivery/uplink/link.py), in its loop and inside paho's callbacks:
no lock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.delivery.outbox import Message, Outbox
from agent.delivery.protocol import Priority
from agent.delivery.uplink.mailbox import LIVE_ROW, Mailbox
from agent.delivery.uplink.pacing import MAX_WAIT_S, Gate, Pacer
from agent.delivery.uplink.receipts import Confirmations
from agent.errors import OutboxError
from agent.tracing import Point, Tracer

log = logging.getLogger("agent.uplink")


class Sender:
    """Hands paho the outbox's rows, the mailbox's values and live video, in that order of
    urgency; deletes a row once the broker has it (an alarm: once the centre confirms it)."""

    def __init__(
        self,
        outbox: Outbox,
        mailbox: Mailbox,
        centre: Confirmations,
        pacer: Pacer,
        clock: Callable[[], float],
        tracer: Tracer,
    ) -> None:
        self._outbox = outbox
        self._mailbox = mailbox
        self._centre = centre
        self._pacer = pacer
        self._clock = clock
        self._trace = tracer
        self._inflight: dict[int, tuple[int, Priority]] = {}  # paho mid -> (row id, class)
        self._alarm_sent: dict[int, float] = {}  # paho mid -> when an alarm was handed over
        self._refused: set[int] = set()  # rows the broker refused: retried on the next connection
        self._dirty = True
        self.gate = Gate.IDLE  # why video is not being handed to paho right now
        self._bulk_due = 0.0
        self._acked_bulk: list[int] = []  # video rows acked but not yet deleted
        self._acked_at = 0.0
        # Read by other threads only for status (racy but harmless).
        self.sent = 0
        self.last_ack_at: float | None = None  # wall time of the broker's last PUBACK

    def look_again(self) -> None:
        """Something may be waiting (a wake-up, a new connection): pump on the next turn."""
        self._dirty = True

    def connection_started(self) -> None:
        self._inflight.clear()
        self._refused.clear()

    def connection_ended(self) -> None:
        self._alarm_sent.clear()

    def oldest_alarm(self) -> float | None:
        """When the oldest alarm still without its PUBACK was handed to paho, or None."""
        return min(self._alarm_sent.values()) if self._alarm_sent else None

    def turn(self, client: mqtt.Client, now: float, sock_writable: bool) -> float:
        """One turn of the loop while online; returns the seconds until the sender wants the
        next one (infinite: only when something happens)."""
        due = self.gate in (Gate.BUCKET, Gate.PATH) and now >= self._bulk_due
        # While video waits, the path is watched at least every MAX_WAIT_S.
        watch = self._pacer.auto and self.gate is not Gate.IDLE
        if self._dirty or sock_writable or due or watch:
            self._publish_latest(client)
            self._pump(client, sock_writable)
        self.flush_acks(force=False)
        self._resend_unconfirmed(client, now)
        timeout = math.inf
        if self.gate in (Gate.BUCKET, Gate.PATH):
            timeout = min(timeout, self._bulk_due - now)
        if watch:
            timeout = min(timeout, MAX_WAIT_S)
        resend_due = self._centre.next_due()
        if resend_due is not None:
            timeout = min(timeout, resend_due - now)
        return timeout

    def _pump(self, client: mqtt.Client, sock_writable: bool) -> None:
        """Hand paho every waiting alarm and control message; video only into an idle pipe.

        Bytes queued in paho or unsent in the kernel are bytes an alarm must wait behind, so
        a video message is handed over only when paho's buffer is empty, the socket reports
        room (TCP_NOTSENT_LOWAT), the in-flight window has a slot and the video bandwidth cap
        has tokens. At most about one chunk plus the low-water mark precedes an alarm.
        """
        self._dirty = False
        try:
            busy = set(self._inflight_rows()) | self._refused | set(self._acked_bulk)
            urgent = self._outbox.next_batch(busy, 64, Priority.CONTROL)
            for msg in urgent:
                if not self._publish(client, msg):
                    return
            now = self._clock()
            path = self._pacer.path_wait(client.socket(), now)  # None: no path measure
            bulk_in_flight = sum(1 for _, p in self._inflight.values() if p >= Priority.LIVE)
            if bulk_in_flight >= self._pacer.window:
                self.gate = Gate.WINDOW  # a PUBACK sets _dirty
                return
            if client.want_write() or (path is None and not (sock_writable or bulk_in_flight == 0)):
                self.gate = Gate.SOCKET
                return
            if path:
                self.gate, self._bulk_due = Gate.PATH, now + path
                return
            live = self._mailbox.next_live()
            bulk = (
                [live]
                if live
                else self._outbox.next_batch(busy | {m.id for m in urgent}, 1, Priority.CLIP)
            )
        except OutboxError as exc:
            log.error("cannot read the outbox: %s", exc)
            return
        if not bulk or bulk[0].priority < Priority.LIVE:
            self.gate = Gate.IDLE
            return
        wait = self._pacer.wait_for(len(bulk[0].payload), now)
        if wait > 0:
            self.gate, self._bulk_due = Gate.BUCKET, now + wait
            return
        if bulk[0].id == LIVE_ROW:
            self._mailbox.taken(bulk[0])
        self._publish(client, bulk[0])
        # The next one when the socket has room again, or (measured) the path has drained.
        self.gate, self._bulk_due = (Gate.PATH, now) if self._pacer.auto else (Gate.SOCKET, 0.0)

    def _resend_unconfirmed(self, client: mqtt.Client, now: float) -> None:
        for msg in self._centre.due(now, set(self._inflight_rows())):
            if not self._publish(client, msg):
                return

    def _publish_latest(self, client: mqtt.Client) -> None:
        latest, transient = self._mailbox.take()
        for topic, payload in latest.items():
            info = client.publish(topic, payload, qos=1, retain=True)
            self._mailbox.latest_sent(info.mid, topic, payload)
        for topic, payload in transient:
            client.publish(topic, payload, qos=1)

    def _publish(self, client: mqtt.Client, msg: Message) -> bool:
        info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._dirty = True
            return False  # the link is going down; the row stays READY
        self._inflight[info.mid] = (msg.id, msg.priority)
        if msg.priority is Priority.ALARM:
            self._alarm_sent[info.mid] = self._clock()
            self._trace(Point.PUBLISHED, msg.key)
        return True

    def flush_acks(self, force: bool) -> None:
        """Delete acknowledged video in batches: one fsync per batch spares the SD card."""
        if not self._acked_bulk:
            return
        if not force and len(self._acked_bulk) < 64 and self._clock() - self._acked_at < 0.5:
            return
        try:
            self._outbox.ack_many(self._acked_bulk)
        except OutboxError as exc:  # they will be sent again; the centre drops duplicates
            log.error("cannot delete %d acknowledged messages: %s", len(self._acked_bulk), exc)
        self._acked_bulk = []

    def _inflight_rows(self) -> list[int]:
        return [row for row, _ in self._inflight.values()]

    def on_publish(self, mid: int, rc: ReasonCode) -> None:
        """The broker's PUBACK for ``mid`` (inside paho's loop_read, on the uplink thread)."""
        self._mailbox.acked(mid)
        self._alarm_sent.pop(mid, None)
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        row, prio = entry
        self._dirty = True
        if row == LIVE_ROW:
            return  # live video is not stored, so there is nothing to delete
        if rc.is_failure:
            self._refused.add(row)
            log.error("broker refused message %d: %s; check the broker ACL for this site", row, rc)
            return
        self.sent += 1
        self.last_ack_at = time.time()
        if prio is Priority.ALARM:
            self._centre.delivered(row)
            self._trace(Point.ACKED, "")
            return
        if prio >= Priority.LIVE:
            if not self._acked_bulk:
                self._acked_at = self._clock()
            self._acked_bulk.append(row)
            return
        try:
            self._outbox.ack(row)
        except OutboxError as exc:  # it will be sent again; the centre drops the duplicate
            log.error("cannot delete acknowledged message %d: %s", row, exc)
