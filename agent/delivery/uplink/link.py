"""The MQTT uplink: drains the outbox to the broker, in priority order, and receives commands.

One thread, ``uplink``, owns the paho client and everything it touches: it connects, runs
paho's external-loop API (socket / loop_read / loop_write / loop_misc) under its own select(),
and pumps the outbox. Other threads only call :meth:`Uplink.wake` (one byte on a pipe) or post
to the mailbox, so paho's callbacks and our bookkeeping never race.

The thread runs under the crash-only supervisor: a crash anywhere in it, paho's callbacks
included, restarts it with a fresh connection rebuilt from the outbox. Its parts: making
connections and the link's state (connection.py), what each turn hands paho and what PUBACKs
settle (sender.py), receipts and presence (receipts.py), the mailbox (mailbox.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
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
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Topics
from agent.delivery.uplink.client import close_quietly
from agent.delivery.uplink.connection import Connection, LinkState
from agent.delivery.uplink.mailbox import Mailbox
from agent.delivery.uplink.pacing import Gate, Pacer
from agent.delivery.uplink.receipts import Confirmations
from agent.delivery.uplink.sender import Sender
from agent.errors import OutboxError
from agent.supervision import Supervisor, Worker
from agent.tracing import Point, Tracer, no_trace

__all__ = ["LinkState", "Uplink"]

log = logging.getLogger("agent.uplink")

Clock = Callable[[], float]


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
        self._topics = topics
        self._outbox = outbox
        self._connack_timeout_s = connack_timeout_s
        self._backoff = backoff or Backoff()
        self._on_message_cb = on_message
        self._alarm_ack_timeout_s = alarm_ack_timeout_s
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
        self.pacer = pacer or Pacer()
        self.mailbox = Mailbox()
        self.centre = Confirmations(outbox, resend_s, clock, on_clip_receipt)
        self._sender = Sender(outbox, self.mailbox, self.centre, self.pacer, clock, tracer)
        self._link = Connection(
            cfg,
            topics,
            status_payload,
            (topics.receipt, topics.presence, *subscriptions),
            backoff=self._backoff,
            pacer=self.pacer,
            stopping=self._stopping,
            on_online=self._sender.look_again,
            clock=clock,
        )

    # --- status (other threads read it; racy but harmless) ----------------------------------

    @property
    def state(self) -> LinkState:
        return self._link.state

    @property
    def last_error(self) -> str:
        return self._link.last_error

    @property
    def connected_since(self) -> float | None:
        return self._link.connected_since

    @property
    def failures(self) -> int:
        """Connections failed or lost since the start."""
        return self._link.failures

    @property
    def sent(self) -> int:
        return self._sender.sent

    @property
    def last_ack_at(self) -> float | None:
        """Wall time of the broker's last PUBACK."""
        return self._sender.last_ack_at

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
                self._link.state = LinkState.OFFLINE
                self._wait_retry(last_attempt)
        finally:
            self._end_connection()
            self._link.state = LinkState.STOPPED if self._stopping.is_set() else LinkState.OFFLINE

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
        client = self._link.connect(self._alarm_waiting, self._on_publish, self._on_message)
        if client is not None:
            self._sender.connection_started()
        return client

    def _serve(self, client: mqtt.Client) -> None:
        """Run one connection until it drops or we stop."""
        started = self._clock()
        sock_writable = False
        while True:
            if client.socket() is None:
                self._link.lost("the socket was closed")
                break
            self._beat()
            now = self._clock()
            if self.state is LinkState.CONNECTING and now - started > self._connack_timeout_s:
                self._link.fail("no CONNACK from the broker in time")
                client.disconnect()
                break
            if self._stopping.is_set():
                self._link.shutdown(client)
                break
            oldest_alarm = self._sender.oldest_alarm()
            if oldest_alarm is not None and now - oldest_alarm > self._alarm_ack_timeout_s:
                # A connection can die without a sound (a router's NAT state lost): keepalive
                # would notice only after up to 2 x keepalive_s. An alarm cannot wait that long.
                self._link.fail(
                    f"no PUBACK for an alarm in {self._alarm_ack_timeout_s:.0f} s: the "
                    "connection is dead; reconnecting"
                )
                break
            timeout = 1.0
            if oldest_alarm is not None:
                timeout = min(timeout, max(0.0, oldest_alarm + self._alarm_ack_timeout_s - now))
            if self.state is LinkState.ONLINE:
                timeout = min(timeout, self._sender.turn(client, now, sock_writable))
            # Ask for writability only when paho has bytes to write or video waits for room:
            # under TCP_NOTSENT_LOWAT the socket is writable only when little is unsent.
            want_w = client.want_write() or self._sender.gate is Gate.SOCKET
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
                self._link.lost(mqtt.error_string(rc))
                break
        self._sender.flush_acks(force=True)
        self._end_connection()

    def _end_connection(self) -> None:
        """Forget one connection: on its normal end, and after a crash in the middle of it."""
        self._sender.connection_ended()
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
        once in the external-loop mode, so in the sender's turn (sender.py: its pump, the
        mailbox's values, the resends) and in the callbacks they trigger. A socket object
        fetched earlier in the turn may be closed by now (fileno() -1: select() raises) or its
        number reused by another file. So the socket is fetched here, after every paho call of
        the turn, and nothing but select() runs between fetching and using it.
        """
        sock = client.socket()
        if sock is None:
            self._link.lost("the socket was closed")
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
            self._link.lost(str(exc))
            return None
        if self._wake_r in readable:
            self._drain_wake()
            self._sender.look_again()
        return pending or fd in readable, bool(writable)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        self._trace(Point.WOKE, "")

    # --- paho callbacks (run on the uplink thread, inside loop_read/loop_write) -------------

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._link.published(mid)
        self._sender.on_publish(mid, rc)

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
