"""The MQTT uplink: drains the outbox to the broker, in priority order, and receives commands.

One thread, ``uplink``, owns the paho client and everything it touches: it connects, runs
paho's external-loop API (socket / loop_read / loop_write / loop_misc) under its own select(),
and pumps the outbox. Other threads only call :meth:`Uplink.wake` (one byte on a pipe) or post
to the mailbox, so paho's callbacks and our bookkeeping never race.

Each connection gets a fresh paho client. paho keeps unacknowledged messages in memory and
resends them on reconnect, but our outbox is the only record that survives a crash, so we make
it the only record, full stop: after a reconnect every unacked row is simply pumped again with
the same id and the centre drops the duplicate. No state lives in two places. The thread runs
under the crash-only supervisor: a crash anywhere in it, paho's callbacks included, restarts
it with a fresh connection rebuilt from the outbox.

Priorities: paho is handed only a small window of non-alarm messages at a time (pacing.py), so
an alarm that arrives while megabytes of clips wait goes out in the next select() turn. Alarms
are never held back by the window. Receipts and presence: receipts.py.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.config.model import MqttConfig
from agent.delivery.outbox import Message, Outbox
from agent.delivery.protocol import Priority, Topics
from agent.delivery.uplink.client import build_client, close_quietly
from agent.delivery.uplink.mailbox import LIVE_ROW, Mailbox
from agent.delivery.uplink.pacing import MAX_WAIT_S, Gate, Pacer
from agent.delivery.uplink.receipts import Confirmations
from agent.errors import OutboxError
from agent.supervision import Supervisor, Worker
from agent.tracing import Point, Tracer, no_trace

log = logging.getLogger("agent.uplink")

Clock = Callable[[], float]


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # waiting to retry
    STOPPED = "stopped"


class Uplink:
    """Create, then :meth:`start`. ``status_payload(state)`` builds the retained status."""

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        outbox: Outbox,
        status_payload: Callable[[str, str], bytes],
        *,
        pacer: Pacer | None = None,
        connack_timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_clip_receipt: Callable[[str, str], None] | None = None,
        subscriptions: tuple[str, ...] = (),
        resend_s: float = 5.0,
        alarm_ack_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
        tracer: Tracer = no_trace,
    ) -> None:
        self._cfg = cfg
        self._topics = topics
        self._outbox = outbox
        self._status_payload = status_payload
        self._connack_timeout_s = connack_timeout_s
        self._backoff = backoff or Backoff()
        self._on_message_cb = on_message
        self._subscriptions = (topics.receipt, topics.presence, *subscriptions)
        self._alarm_ack_timeout_s = alarm_ack_timeout_s
        self._alarm_sent: dict[int, float] = {}  # paho mid -> when an alarm was handed over
        self._clock = clock
        self._trace = tracer  # the benches' points (agent/tracing.py)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._stopping = threading.Event()
        self._worker: Worker | None = None
        self._beat: Callable[[], None] = lambda: None
        self._client: mqtt.Client | None = None  # the current connection, closed on any exit
        # Owned by the uplink thread; other threads read them only for status (racy but harmless).
        self.state = LinkState.OFFLINE
        self.last_error = ""
        self.connected_since: float | None = None
        self.sent = 0
        self.last_ack_at: float | None = None  # wall time of the broker's last PUBACK
        self.failures = 0  # connections failed or lost since the start
        self._inflight: dict[int, tuple[int, Priority]] = {}  # paho mid -> (row id, class)
        self._refused: set[int] = set()  # rows the broker refused: retried on the next connection
        self._dirty = True
        self._offline_mid: int | None = None
        self.pacer = pacer or Pacer()
        self._gate = Gate.IDLE  # why video is not being handed to paho right now
        self._bulk_due = 0.0
        self._acked_bulk: list[int] = []  # video rows acked but not yet deleted
        self._acked_at = 0.0
        self._socket_error = ""  # the last socket failure paho logged (a TLS alert, say)
        self.mailbox = Mailbox()
        self.centre = Confirmations(outbox, resend_s, clock, on_clip_receipt)

    @property
    def centre_present(self) -> bool | None:
        """Whether any centre receiver is listening (None: not known on this connection)."""
        return self.centre.present

    # --- other threads ----------------------------------------------------------------------

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Run the ``uplink`` thread under ``supervisor`` (agent/supervision.py): a crash
        anywhere in it, paho's callbacks included, restarts it with a fresh connection."""
        self._worker = (supervisor or Supervisor()).spawn("uplink", self._run, wake=self.wake)

    def wake(self) -> None:
        """Something new is in the outbox. Never blocks: a full pipe is already a wake-up.
        After stop() it does nothing (the pipe's numbers may belong to other files by then)."""
        with self._pipe_lock, contextlib.suppress(BlockingIOError):
            if self._pipe_open:
                os.write(self._wake_w, b"!")

    def post_latest(self, topic: str, payload: bytes) -> None:
        """Publish retained when online; a newer value for the topic replaces an unsent one,
        and one lost with its connection goes again (mailbox.py)."""
        self.mailbox.post_latest(topic, payload)
        self.wake()

    def post_live(self, topic: str, payloads: list[bytes]) -> None:
        """A new live segment's chunks; an older segment's still waiting are dropped, so the
        viewer skips to the newest keyframe instead of falling behind. Never on disk."""
        self.mailbox.post_live(topic, payloads)
        self.wake()

    def post_transient(self, topic: str, payload: bytes) -> None:
        """Send once if online, never stored: for answers to unauthenticated input, which
        anyone able to publish could otherwise use to fill the box's disk."""
        self.mailbox.post_transient(topic, payload)
        self.wake()

    def stop(self, timeout: float = 4.0) -> None:
        """Publish offline (a clean DISCONNECT suppresses the will), then disconnect."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.stop(timeout)
            if self._worker.alive:
                return  # hung: leave it its pipe; the process is on its way out
        with self._pipe_lock:
            self._pipe_open = False
            os.close(self._wake_r)
            os.close(self._wake_w)

    # --- the uplink thread ------------------------------------------------------------------

    def _run(self, worker: Worker) -> None:
        """The thread's body; after a crash it runs again from the top. Everything it needs
        is rebuilt here or in _connect from the outbox, the only record that matters."""
        self._beat = worker.beat
        self.centre.load()
        try:
            while not self._stopping.is_set():
                last_attempt = self._clock()
                self._client = self._connect()
                if self._client is not None:
                    self._serve(self._client)
                if self._stopping.is_set():
                    break
                self.state = LinkState.OFFLINE
                self._wait_retry(last_attempt)
        finally:
            self._end_connection()
            self.state = LinkState.STOPPED if self._stopping.is_set() else LinkState.OFFLINE

    def _wait_retry(self, last_attempt: float) -> None:
        deadline = last_attempt + self._backoff.next_delay(self._alarm_waiting())
        while not self._stopping.is_set():
            self._beat()
            now = self._clock()
            if self._alarm_waiting():
                deadline = min(deadline, last_attempt + self._backoff.alarm_cap_s)
            if now >= deadline:
                return
            readable, _, _ = select.select([self._wake_r], [], [], min(deadline - now, 1.0))
            if readable:
                self._drain_wake()

    def _alarm_waiting(self) -> bool:
        try:
            return self._outbox.depth()["alarm"] > 0
        except OutboxError:
            return True

    def _connect(self) -> mqtt.Client | None:
        self.state = LinkState.CONNECTING
        try:
            client = self._new_client()
            # A black-holed link makes connect() wait out its timeout: shorter while an alarm
            # waits, so the alarm goes within ~1.5 s of the link returning.
            client.connect_timeout = 2.0 if self._alarm_waiting() else 5.0
            client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS (SSLError is OSError)
            self._fail(f"cannot connect to {self._cfg.host}:{self._cfg.port}: {exc}")
            return None
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Writable only while little is unsent (the pacer's low-water mark, and its pacing):
            # bounds what an alarm queues behind.
            self.pacer.attach(sock)
        self._inflight.clear()
        self._refused.clear()
        return client

    def _new_client(self) -> mqtt.Client:
        client = build_client(self._cfg)
        client.max_inflight_messages_set(0)  # our window bounds what paho holds, not paho
        client.will_set(
            self._topics.status,
            self._status_payload("offline", "connection lost"),
            qos=1,
            retain=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_log = self._on_log
        self._socket_error = ""
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _serve(self, client: mqtt.Client) -> None:
        """Run one connection until it drops or we stop."""
        started = self._clock()
        sock_writable = False
        while True:
            if client.socket() is None:
                self._lost("the socket was closed")
                break
            self._beat()
            now = self._clock()
            if self.state is LinkState.CONNECTING and now - started > self._connack_timeout_s:
                self._fail("no CONNACK from the broker in time")
                client.disconnect()
                break
            if self._stopping.is_set():
                self._shutdown(client)
                break
            if (
                self._alarm_sent
                and now - min(self._alarm_sent.values()) > self._alarm_ack_timeout_s
            ):
                # A connection can die without a sound (a router's NAT state lost): keepalive
                # would notice only after up to 2 x keepalive_s. An alarm cannot wait that long.
                self._fail(
                    f"no PUBACK for an alarm in {self._alarm_ack_timeout_s:.0f} s: the "
                    "connection is dead; reconnecting"
                )
                break
            timeout = 1.0
            if self._alarm_sent:
                oldest = min(self._alarm_sent.values())
                timeout = min(timeout, max(0.0, oldest + self._alarm_ack_timeout_s - now))
            if self.state is LinkState.ONLINE:
                due = self._gate in (Gate.BUCKET, Gate.PATH) and now >= self._bulk_due
                # While video waits, the path is watched at least every MAX_WAIT_S.
                watch = self.pacer.auto and self._gate is not Gate.IDLE
                if self._dirty or sock_writable or due or watch:
                    self._publish_latest(client)
                    self._pump(client, sock_writable)
                self._flush_acks(force=False)
                self._resend_unconfirmed(client, now)
                if self._gate in (Gate.BUCKET, Gate.PATH):
                    timeout = min(timeout, self._bulk_due - now)
                if watch:
                    timeout = min(timeout, MAX_WAIT_S)
                resend_due = self.centre.next_due()
                if resend_due is not None:
                    timeout = min(timeout, resend_due - now)
            # Ask for writability only when paho has bytes to write or video waits for room:
            # under TCP_NOTSENT_LOWAT the socket is writable only when little is unsent.
            want_w = client.want_write() or self._gate is Gate.SOCKET
            ready = self._wait_socket(client, want_w, timeout)
            if ready is None:
                break  # paho closed the socket since the top of the loop (see _wait_socket)
            readable, writable = ready
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            if readable:
                rc = client.loop_read()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and writable:
                rc = client.loop_write()  # NO_CONN if a callback in loop_read closed it
            sock_writable = writable and not client.want_write()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = client.loop_misc()  # keepalive pings; drops a link whose PINGRESP is late
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                self._lost(mqtt.error_string(rc))
                break
        self._flush_acks(force=True)
        self._end_connection()

    def _end_connection(self) -> None:
        """Forget one connection: on its normal end, and after a crash in the middle of it."""
        self._alarm_sent.clear()
        self.mailbox.connection_ended()
        if self._client is not None:
            close_quietly(self._client)
            self._client = None
        self.centre.connection_ended()

    def _wait_socket(
        self, client: mqtt.Client, want_write: bool, timeout: float
    ) -> tuple[bool, bool] | None:
        """select() on paho's socket and the wake pipe: (readable, writable), or None when the
        connection has ended.

        paho closes its socket, and forgets it, wherever an I/O error surfaces: in loop_read,
        loop_write and loop_misc, and also inside publish() and subscribe(), which write at
        once in the external-loop mode, so in our _pump, _publish_latest, _resend_unconfirmed
        and in the callbacks they trigger. A socket object fetched earlier in the turn may be
        closed by now (fileno() -1: select() raises) or its number reused by another file.
        So the socket is fetched here, after every paho call of the turn, and nothing but
        select() runs between fetching and using it.
        """
        sock = client.socket()
        if sock is None:
            self._lost("the socket was closed")
            return None
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            timeout = 0.0  # TLS bytes already decrypted in the buffer: select() cannot see them
            pending = True
        else:
            pending = False
        try:
            fd = sock.fileno()
            readable, writable, _ = select.select(
                [fd, self._wake_r], [fd] if want_write else [], [], max(timeout, 0.001)
            )
        except (OSError, ValueError) as exc:  # closed under us after all: end the connection
            self._lost(str(exc))
            return None
        if self._wake_r in readable:
            self._drain_wake()
            self._dirty = True
        return pending or fd in readable, bool(writable)

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
            path = self.pacer.path_wait(client.socket(), now)  # None: no path measure
            bulk_in_flight = sum(1 for _, p in self._inflight.values() if p >= Priority.LIVE)
            if bulk_in_flight >= self.pacer.window:
                self._gate = Gate.WINDOW  # a PUBACK sets _dirty
                return
            if client.want_write() or (path is None and not (sock_writable or bulk_in_flight == 0)):
                self._gate = Gate.SOCKET
                return
            if path:
                self._gate, self._bulk_due = Gate.PATH, now + path
                return
            live = self.mailbox.next_live()
            bulk = (
                [live]
                if live
                else self._outbox.next_batch(busy | {m.id for m in urgent}, 1, Priority.CLIP)
            )
        except OutboxError as exc:
            log.error("cannot read the outbox: %s", exc)
            return
        if not bulk or bulk[0].priority < Priority.LIVE:
            self._gate = Gate.IDLE
            return
        wait = self.pacer.wait_for(len(bulk[0].payload), now)
        if wait > 0:
            self._gate, self._bulk_due = Gate.BUCKET, now + wait
            return
        if bulk[0].id == LIVE_ROW:
            self.mailbox.taken(bulk[0])
        self._publish(client, bulk[0])
        # The next one when the socket has room again, or (measured) the path has drained.
        self._gate, self._bulk_due = (Gate.PATH, now) if self.pacer.auto else (Gate.SOCKET, 0.0)

    def _resend_unconfirmed(self, client: mqtt.Client, now: float) -> None:
        for msg in self.centre.due(now, set(self._inflight_rows())):
            if not self._publish(client, msg):
                return

    def _publish_latest(self, client: mqtt.Client) -> None:
        latest, transient = self.mailbox.take()
        for topic, payload in latest.items():
            info = client.publish(topic, payload, qos=1, retain=True)
            self.mailbox.latest_sent(info.mid, topic, payload)
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

    def _flush_acks(self, force: bool) -> None:
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

    def _shutdown(self, client: mqtt.Client) -> None:
        if self.state is LinkState.ONLINE:
            info = client.publish(
                self._topics.status,
                self._status_payload("offline", "agent stopped"),
                qos=1,
                retain=True,
            )
            self._offline_mid = info.mid
            deadline = self._clock() + 1.5
            while self._offline_mid is not None and self._clock() < deadline:
                if client.loop(timeout=0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        client.disconnect()
        log.info("uplink stopped; published offline")

    def _fail(self, reason: str) -> None:
        self.failures += 1
        self.state = LinkState.OFFLINE
        self.connected_since = None
        if reason != self.last_error:
            log.warning("uplink: %s", reason)
        self.last_error = reason

    def _lost(self, why: str) -> None:
        """The connection ended; say why once (paho's on_disconnect may have said it)."""
        if self.state is not LinkState.OFFLINE:
            self._fail(f"connection lost: {self._socket_error or why}")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        self._trace(Point.WOKE, "")

    # --- paho callbacks (run on the uplink thread, inside loop_read/loop_write) -------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self._fail(f"broker refused the connection: {rc}")  # e.g. not authorised
            return
        self.state = LinkState.ONLINE
        self.connected_since = time.time()
        self.last_error = ""
        self._backoff.reset()
        self._dirty = True
        client.publish(self._topics.status, self._status_payload("online", ""), qos=1, retain=True)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        log.info("uplink online to %s:%d", self._cfg.host, self._cfg.port)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, flags: mqtt.DisconnectFlags, rc: ReasonCode, _p: Any
    ) -> None:
        if self._stopping.is_set():
            return
        if flags.is_disconnect_packet_from_server or not self._socket_error:
            self._fail(f"disconnected: {rc}")
        elif "alert" in self._socket_error and "certificate" in self._socket_error:
            self._fail(
                f"the broker refused this box's certificate ({self._socket_error}): check "
                "mqtt.tls.cert_file and key_file, and that the certificate is neither "
                "expired nor revoked"
            )
        else:
            self._fail(f"connection lost: {self._socket_error}")

    def _on_log(self, _c: mqtt.Client, _u: Any, level: int, message: str) -> None:
        """paho reports why a TLS socket died (the broker's alert) only in its log."""
        if level == mqtt.MQTT_LOG_ERR and message.startswith("failed to receive on socket: "):
            self._socket_error = message.removeprefix("failed to receive on socket: ")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        if mid == self._offline_mid:
            self._offline_mid = None
        self.mailbox.acked(mid)
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
            self.centre.delivered(row)
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

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._topics.receipt:
            self.centre.on_receipt(bytes(msg.payload))
            self._trace(Point.RECEIPT, "")
            return
        if mqtt.topic_matches_sub(self._topics.presence, msg.topic):
            self.centre.on_presence(msg.topic, bytes(msg.payload))
            return
        if self._on_message_cb is not None:
            try:
                self._on_message_cb(msg.topic, bytes(msg.payload))
            except Exception:  # a bad command must never take the uplink down
                log.exception("command handler failed on %s", msg.topic)
