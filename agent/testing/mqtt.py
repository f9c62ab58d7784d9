"""The one MQTT client of the tests and benches: it watches a broker and talks to it.

Every test and bench needs the same few things from a broker: subscribe and be sure the
subscription stands before acting, keep what arrives with its arrival time, publish and know
the broker has it, keep a persistent session across broker restarts as the centre does, or
keep every refusal the broker answers with (the security tests). One client with options
does all of it, so a paho quirk found once (Nagle behind a delayed ACK, two threads writing one
TLS socket) is fixed once.

Threads: by default paho's own loop thread (``loop_start``) does all socket I/O, and
``publish()`` from another thread only queues (two threads writing one TLS socket broke its
records now and then). With ``threaded=False`` there is no loop thread: the caller's
:meth:`MqttClient.publish` writes at once and :meth:`flush`/:meth:`wait_ack` run the loop,
which the benches use for a baseline publisher with no thread hand-off (a loop thread fighting
the caller for the GIL made a "floor" slower than the agent it was the floor of).

One exception, :class:`Receipts` (agent/testing/receipts.py, importable from here too): the
centre's receipts to a burst of hundreds of alarms are read by ``mosquitto_sub`` (C), which keeps
up where a Python client's loop did not.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.testing import wait_for
from agent.testing.receipts import Receipts

__all__ = ["MqttClient", "Receipts", "Received", "Tls", "Will"]


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() (= perf_counter() on Linux), first thing on paho's thread

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True, slots=True)
class Tls:
    """Trust ``ca`` for the broker; present ``cert``/``key`` as this client's identity."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


class MqttClient:
    """Create, :meth:`connect`, use, :meth:`close` (or ``with``).

    ``topics`` are subscribed at QoS 1 on every connection; ``connect`` returns once the
    broker has answered each SUBACK. ``persistent`` keeps the session (a fixed ``client_id``,
    clean_start off, an hour's expiry), so the broker queues for this client while it is away.
    ``reconnect``: seconds between attempts (min, max), ``"paho"`` for paho's own schedule
    (1 s doubling to 120 s), or None to stay gone once the connection ends or is refused.
    ``on_message`` runs on paho's thread before the message is kept and waiters are woken, so
    what it does (a responder's reply, a timestamp) is done when :meth:`wait` returns.
    """

    def __init__(
        self,
        port: int,
        topics: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        client_id: str = "",
        persistent: bool = False,
        keepalive: int = 60,
        reconnect: tuple[float, float] | str | None = (0.05, 0.5),
        tls: Tls | None = None,
        username: str | None = None,
        will: Will | None = None,
        protocol: MQTTProtocolVersion = mqtt.MQTTv5,
        threaded: bool = True,
        sndbuf: int | None = None,
        on_message: Callable[[Received], None] | None = None,
    ) -> None:
        self.host, self.port, self.topics = host, port, tuple(topics)
        self._persistent, self._keepalive, self._reconnect = persistent, keepalive, reconnect
        self._threaded, self._sndbuf, self._hook = threaded, sndbuf, on_message
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=reconnect is not None,
        )
        if isinstance(reconnect, tuple):
            c.reconnect_delay_set(reconnect[0], reconnect[1])  # type: ignore[arg-type]  # floats work
        if tls is not None:
            c.tls_set(
                ca_certs=str(tls.ca),
                cert_reqs=ssl.CERT_REQUIRED,
                certfile=str(tls.cert) if tls.cert else None,
                keyfile=str(tls.key) if tls.key else None,
            )
        if username is not None:
            c.username_pw_set(username)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        c.on_socket_open = self._on_socket_open
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c
        # Guards everything below; paho's thread notifies it. Reentrant: a predicate given to
        # until() may call received().
        self._cond = threading.Condition(threading.RLock())
        self.messages: list[Received] = []
        self.connack: ReasonCode | None = None
        self.error = ""  # why the connection failed or ended
        self.gone = threading.Event()  # the connection ended (for good if reconnect is None)
        self.acks: dict[int, ReasonCode] = {}  # mid -> the broker's PUBACK reason
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.subscribed_at: list[float] = []  # monotonic time of each SUBACK of ``topics``
        self._pending_sub: set[int] = set()

    # --- connection -----------------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> MqttClient:
        """Connect and subscribe; returns once subscribed (or connected, with no topics).

        With ``reconnect`` the broker need not be up yet. Without it, a refusal is not an
        error here: ``connack``, ``error`` and ``gone`` say what the broker answered.
        """
        props = None
        if self._persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
        clean = False if self._persistent else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        if self._reconnect is not None and self._threaded:
            self.client.connect_async(
                self.host, self.port, keepalive=self._keepalive, clean_start=clean, properties=props
            )
        else:
            try:
                self.client.connect(
                    self.host,
                    self.port,
                    keepalive=self._keepalive,
                    clean_start=clean,
                    properties=props,
                )
            except OSError as exc:  # ssl.SSLError included: the handshake runs in connect()
                self.error = str(exc)
                self.gone.set()
                return self
        if self._threaded:
            self.client.loop_start()
            want = "the SUBACKs" if self.topics else "the CONNACK"
            wait_for(self._ready, timeout, f"{want} from the broker on port {self.port}")
        else:
            self._loop_until(self._ready, timeout, "the CONNACK")
        return self

    def _ready(self) -> bool:
        with self._cond:
            if self.gone.is_set() and self._reconnect is None:
                return True  # refused or cut: the caller reads connack and error
            return (
                self.connack is not None
                and not self.connack.is_failure
                and (not self.topics or (len(self.subscribed_at) > 0 and not self._pending_sub))
            )

    @property
    def online(self) -> bool:
        return self.connack is not None and not self.connack.is_failure and not self.gone.is_set()

    def drop(self) -> None:
        """Cut the TCP connection without a DISCONNECT, as a box losing power: the will fires."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket), self.error
        sock.shutdown(socket.SHUT_RDWR)
        self.gone.wait(2.0)
        self.client.loop_stop()

    def close(self) -> None:
        if not self.gone.is_set():
            self.client.disconnect()
            if self._threaded:
                self.gone.wait(1.0)
        self.client.loop_stop()

    def __enter__(self) -> MqttClient:
        return self.connect()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- publishing and subscribing -------------------------------------------------------

    def send(self, topic: str, payload: bytes = b"x", qos: int = 1, retain: bool = False) -> int:
        """Hand a message to paho and return its mid, without waiting for the broker."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise AssertionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info.mid

    def wait_ack(self, mid: int, timeout: float = 5.0) -> ReasonCode:
        """The broker's PUBACK for ``mid``: its reason code (a refusal is not an error here)."""
        if self._threaded:
            wait_for(lambda: mid in self.acks, timeout, f"the PUBACK of message {mid}")
        else:
            self._loop_until(lambda: mid in self.acks, timeout, f"the PUBACK of message {mid}")
        with self._cond:
            return self.acks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes = b"x",
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> ReasonCode:
        """Publish at QoS 1 and wait for the broker's answer."""
        return self.wait_ack(self.send(topic, payload, qos, retain), timeout)

    def subscribe(self, topic: str, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe (for this connection only) and return the broker's SUBACK codes."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None, f"subscribe to {topic}: not connected"
        wait_for(lambda: mid in self.subacks, timeout, f"the SUBACK for {topic}")
        with self._cond:
            return self.subacks[mid]

    def flush(self, timeout: float = 5.0) -> None:
        """Unthreaded: write what paho still holds, waiting in select() for room (which,
        unlike spinning on loop_write, releases the GIL to the other threads)."""
        deadline = time.monotonic() + timeout
        while self.client.want_write():
            sock = self.client.socket()
            if sock is None or time.monotonic() > deadline:
                raise AssertionError(f"could not write to the broker on port {self.port}")
            select.select([], [sock], [], timeout)
            self.client.loop_write()

    def _loop_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            self.client.loop(timeout=0.05)

    # --- what arrived -----------------------------------------------------------------------

    def received(self, topic_filter: str = "#", since: int = 0) -> list[Received]:
        """Messages whose topic matches ``topic_filter``, from index ``since`` of all."""
        with self._cond:
            return [
                m for m in self.messages[since:] if mqtt.topic_matches_sub(topic_filter, m.topic)
            ]

    def payloads(self, topic_filter: str = "#") -> list[Any]:
        """The JSON of each non-empty message (a retained message is cleared with an empty
        one)."""
        return [m.json() for m in self.received(topic_filter) if m.payload]

    def count(self) -> int:
        """How many messages so far: a ``since`` for the next wait."""
        with self._cond:
            return len(self.messages)

    def wait(
        self,
        topic_filter: str = "#",
        n: int = 1,
        timeout: float = 10.0,
        since: int = 0,
        payload: bytes | None = None,
    ) -> list[Received]:
        """Until ``n`` messages matching ``topic_filter`` (and ``payload``, if given) arrived
        after index ``since``; those messages."""

        def matching() -> list[Received]:
            return [
                m
                for m in self.received(topic_filter, since)
                if payload is None or m.payload == payload
            ]

        self.until(lambda: len(matching()) >= n, timeout, f"{n} message(s) on {topic_filter}")
        return matching()

    def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``predicate`` holds, tested as each message or answer arrives (no polling:
        a latency measured through this is not rounded up to a poll interval)."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    # --- paho's callbacks (its thread; the caller's with threaded=False) ---------------------

    def _on_socket_open(self, _c: Any, _u: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):  # as the agent's uplink: compare code, not options
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._sndbuf)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.connack = rc
            self.gone.clear()
            if not rc.is_failure:
                for topic in self.topics:
                    _r, mid = client.subscribe(topic, qos=1)
                    if mid is not None:
                        self._pending_sub.add(mid)
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.error = self.error or str(rc)
            self.gone.set()
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.acks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        at = time.monotonic()
        with self._cond:
            self.subacks[mid] = rcs
            if mid in self._pending_sub:
                self._pending_sub.discard(mid)
                if not self._pending_sub:
                    self.subscribed_at.append(at)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        got = Received(msg.topic, bytes(msg.payload), bool(msg.retain), at)
        if self._hook is not None:  # first: a waiter woken below sees what it did
            self._hook(got)
        with self._cond:
            self.messages.append(got)
            self._cond.notify_all()
