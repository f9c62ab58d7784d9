"""The centre's MQTT connections: TLS with a client certificate, and back within a second.

Why not paho's ``loop_start()`` and its automatic reconnect: paho's delay doubles up to 120 s,
and a receiver was measured away for 63 s after ten broker restarts in 30 s. The centre must be
back within about a second of its broker, every time. So each :class:`Link` runs paho's
external-loop API under its own ``select()`` (as the box's uplink does) and reconnects with the
code base's one jittered backoff, :class:`agent.backoff.Backoff`, capped at 1 s: jittered, so the
centre's receivers do not return as one wave.

Threads: a Link owns one thread, ``link-<name>``, and only that thread calls paho; its callbacks
(``on_message``) run there. Other threads call :meth:`Link.publish`, which queues the message and
writes one byte to a wake pipe: the one crossing between threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.errors import AgentError

log = logging.getLogger("agent.centre")

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker queues for a receiver that is away, for a week
KEEPALIVE_S = 10
READ_BURST = 256  # packets read in one turn of a link's loop, at most


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the centre's broker is and how to prove who we are: ``mqtts://`` with the centre's
    client certificate on the centre listener (docs/broker.md)."""

    host: str
    port: int
    tls: bool
    ca_file: Path | None = None  # None: the system's CAs
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def parse(
        cls,
        url: str,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> Endpoint:
        parsed = urlparse(url)
        try:
            port = parsed.port
        except ValueError:
            port = -1
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname or port == -1:
            raise AgentError(f"--broker must look like mqtts://HOST:PORT, not {url!r}")
        tls = parsed.scheme == "mqtts"
        if (cert_file is None) != (key_file is None):
            raise AgentError("--tls-cert and --tls-key go together: give both, or neither")
        if not tls and (ca_file or cert_file):
            raise AgentError("TLS files given for a plain mqtt:// broker: use mqtts://")
        return cls(
            parsed.hostname, port or (8883 if tls else 1883), tls, ca_file, cert_file, key_file
        )

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def client(self, client_id: str) -> mqtt.Client:
        """A paho MQTT 5 client with our TLS: the one place it is applied."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.connect_timeout = 5.0
        if self.tls:
            try:
                client.tls_set(
                    ca_certs=_str(self.ca_file),
                    certfile=_str(self.cert_file),
                    keyfile=_str(self.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise AgentError(
                    f"cannot use the TLS files ({exc}): check --tls-ca, --tls-cert and --tls-key"
                ) from exc
        return client


def _read_burst(client: mqtt.Client, sock: Any, fd: int) -> MQTTErrorCode:
    """Read what the socket holds, up to READ_BURST packets. paho's ``loop_read`` reads one
    packet per call while nothing of ours is in flight, and a turn of the loop per packet
    (select, the wake pipe, ``loop_misc``) held an alarm storm to ~400 messages a second on
    a loaded machine (bench/alarm_storm.py)."""
    rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    for _ in range(READ_BURST):
        rc = client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is not sock:
            break
        if (
            not (isinstance(sock, ssl.SSLSocket) and sock.pending())
            and not select.select([fd], [], [], 0)[0]
        ):
            break
    return rc


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


class Link:
    """One persistent MQTT session of the centre, kept up until :meth:`stop`.

    ``on_message(topic, payload)`` runs on the link's thread and must be short. ``on_change(up,
    why)`` is told when the subscriptions are in place again and when the connection is lost.
    ``hello()`` is published on every connect and ``will`` is the MQTT will.
    """

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: Callable[[str, bytes], None],
        *,
        on_change: Callable[[bool, str], None] | None = None,
        hello: Callable[[], Message] | None = None,
        will: Message | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._endpoint = endpoint
        self._client_id = client_id
        self._subscriptions = tuple(subscriptions)
        self._on_message_cb = on_message
        self._on_change = on_change
        self._hello, self._will = hello, will
        self._backoff = backoff or Backoff(base_s=0.1, cap_s=1.0, alarm_cap_s=1.0)
        self._outgoing: deque[Message] = deque()  # appended by any thread, drained by ours
        self._wake_lock = threading.Lock()  # guards the pipe's write end against close()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_subs: set[int] = set()
        self.subscribed = threading.Event()  # set while connected with every subscription
        self.last_error = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"link-{self.name}", daemon=True)
        self._thread.start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Queue a QoS 1 message; any thread. Sent on the next turn of the link's loop."""
        self._outgoing.append(Message(topic, payload, retain))
        self._wake()

    def stop(self, farewell: Message | None = None, timeout: float = 3.0) -> None:
        """Publish ``farewell`` (if connected), disconnect, and end the thread."""
        if farewell is not None:
            self.publish(farewell.topic, farewell.payload, farewell.retain)
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # stuck in a TLS handshake: the daemon thread dies with the process
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(BlockingIOError):
            if self._wake_w >= 0:  # never a number closed and reused for another file
                os.write(self._wake_w, b"!")

    # --- the link's thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            client = self._connect()
            if client is not None:
                self._serve(client)
                with contextlib.suppress(OSError):
                    sock = client.socket()
                    if sock is not None:
                        sock.close()
            if self._stopping.is_set():
                break
            self._stopping.wait(self._backoff.next_delay(alarm_waiting=True))

    def _connect(self) -> mqtt.Client | None:
        client = self._endpoint.client(self._client_id)
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, qos=1, retain=self._will.retain)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            client.connect(
                self._endpoint.host,
                self._endpoint.port,
                keepalive=KEEPALIVE_S,
                clean_start=False,
                properties=props,
            )
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS
            self._lost(f"cannot connect to {self._endpoint}: {exc}")
            return None
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # A receipt follows our PUBACK for the alarm it confirms; under Nagle it would wait
            # for the broker's delayed ACK of that PUBACK: 40 ms (measured: tests/adversarial).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    def _serve(self, client: mqtt.Client) -> None:
        while not self._stopping.is_set():
            while self._outgoing and self.subscribed.is_set():  # else kept for the next session
                msg = self._outgoing.popleft()
                client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain)
            sock = client.socket()  # after every paho call of the turn, as the box's uplink does
            if sock is None:
                self._lost("the connection closed")
                return
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            try:
                fd = sock.fileno()
                readable, writable, _ = select.select(
                    [fd, self._wake_r],
                    [fd] if client.want_write() else [],
                    [],
                    0.0 if pending else 1.0,
                )
            except (OSError, ValueError) as exc:
                self._lost(str(exc))
                return
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            if pending or fd in readable:
                rc = _read_burst(client, sock, fd)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and writable:
                rc = client.loop_write()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = client.loop_misc()
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                self._lost(f"connection lost: {mqtt.error_string(rc)}")
                return
        while self._outgoing:  # the farewell, then a clean DISCONNECT
            msg = self._outgoing.popleft()
            info = client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain)
            with contextlib.suppress(RuntimeError, ValueError):
                for _ in range(20):
                    if info.is_published() or client.loop(timeout=0.1) != 0:
                        break
        client.disconnect()

    def _lost(self, why: str) -> None:
        if self.subscribed.is_set() or why != self.last_error:
            log.warning("receiver link %s: %s", self.name, why)
        was_up = self.subscribed.is_set()
        self.subscribed.clear()
        self.last_error = why
        if was_up and self._on_change is not None:
            self._on_change(False, why)

    # --- paho callbacks, on the link's thread ----------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self._lost(f"the broker refused the connection: {rc}")
            return
        if self._hello is not None:
            hello = self._hello()
            client.publish(hello.topic, hello.payload, qos=1, retain=hello.retain)
        self._pending_subs = set()
        for topic in self._subscriptions:
            _rc, mid = client.subscribe(topic, qos=1)
            if mid is not None:
                self._pending_subs.add(mid)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        if any(code.is_failure for code in codes):
            log.error(
                "receiver link %s: the broker refused a subscription (%s): check the "
                "centre's ACL in docs/broker.md",
                self.name,
                codes,
            )
        self._pending_subs.discard(mid)
        if not self._pending_subs and not self.subscribed.is_set():
            self._backoff.reset()
            self.subscribed.set()
            self.last_error = ""
            log.info("receiver link %s subscribed on %s", self.name, self._endpoint)
            if self._on_change is not None:
                self._on_change(True, "")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message_cb(msg.topic, bytes(msg.payload))
        except Exception:  # one message must never take a link down
            log.exception("receiver link %s failed on a message; carrying on", self.name)
