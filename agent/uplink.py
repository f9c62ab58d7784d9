"""The MQTT uplink: drains the outbox to the broker, in priority order, deleting on PUBACK.

One thread, ``uplink``, owns the paho client and everything it touches: it connects, runs
paho's external-loop API (socket / loop_read / loop_write / loop_misc) under its own select(),
and pumps the outbox. Other threads only call :meth:`wake` (one byte on a pipe), so paho's
callbacks and our bookkeeping never race; that is the single crossing between threads.

Each connection gets a fresh paho client. paho keeps unacknowledged messages in memory and
resends them on reconnect, but our outbox is the only record that survives a crash, so we make
it the only record, full stop: after a reconnect every unacked row is simply pumped again with
the same id and the centre drops the duplicate. No state lives in two places.

Priorities: paho is handed only a small window of non-alarm messages at a time, so an alarm
that arrives while megabytes of clips wait goes out in the next select() turn. Alarms are never
held back by the window.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.errors import OutboxError
from agent.outbox import Outbox
from agent.protocol import Priority, Topics

log = logging.getLogger("agent.uplink")

Clock = Callable[[], float]


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # waiting to retry
    STOPPED = "stopped"


@dataclass
class Backoff:
    """Jittered exponential backoff. A whole region's boxes lose the broker together; jitter
    keeps them from coming back as one wave. While an alarm waits, the wait is capped at 1 s."""

    base_s: float = 0.5
    cap_s: float = 30.0
    alarm_cap_s: float = 1.0
    failures: int = 0

    def next_delay(self, alarm_waiting: bool) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.failures)
        self.failures += 1
        delay = ceiling * random.uniform(0.5, 1.0)
        return min(delay, self.alarm_cap_s) if alarm_waiting else delay

    def reset(self) -> None:
        self.failures = 0


class Uplink:
    """Create, then :meth:`start`. ``status_payload(state)`` builds the retained status."""

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        outbox: Outbox,
        status_payload: Callable[[str, str], bytes],
        *,
        window: int = 4,
        connack_timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        subscriptions: tuple[str, ...] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._topics = topics
        self._outbox = outbox
        self._status_payload = status_payload
        self._window = window
        self._connack_timeout_s = connack_timeout_s
        self._backoff = backoff or Backoff()
        self._on_message_cb = on_message
        self._subscriptions = subscriptions
        self._clock = clock
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Owned by the uplink thread; other threads read them only for status (racy but harmless).
        self.state = LinkState.OFFLINE
        self.last_error = ""
        self.connected_since: float | None = None
        self.sent = 0
        self.heartbeat = clock()
        self._inflight: dict[int, tuple[int, Priority]] = {}  # paho mid -> (row id, class)
        self._refused: set[int] = set()  # rows the broker refused: retried on the next connection
        self._dirty = True
        self._offline_mid: int | None = None

    # --- other threads ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something new is in the outbox. Never blocks: a full pipe is already a wake-up."""
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass

    def stop(self, timeout: float = 4.0) -> None:
        """Publish offline (a clean DISCONNECT suppresses the will), then disconnect."""
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        os.close(self._wake_r)
        os.close(self._wake_w)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the uplink thread ------------------------------------------------------------------

    def _run(self) -> None:
        last_attempt = 0.0
        while not self._stopping.is_set():
            last_attempt = self._clock()
            client = self._connect()
            if client is not None:
                self._serve(client)
            if self._stopping.is_set():
                break
            self.state = LinkState.OFFLINE
            self._wait_retry(last_attempt)
        self.state = LinkState.STOPPED

    def _wait_retry(self, last_attempt: float) -> None:
        deadline = last_attempt + self._backoff.next_delay(self._alarm_waiting())
        while not self._stopping.is_set():
            now = self._clock()
            self.heartbeat = now
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
            client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS (SSLError is OSError)
            self._fail(f"cannot connect to {self._cfg.host}:{self._cfg.port}: {exc}")
            return None
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._inflight.clear()
        self._refused.clear()
        return client

    def _new_client(self) -> mqtt.Client:
        cfg = self._cfg
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5,
        )
        client.connect_timeout = 5.0
        client.max_inflight_messages_set(0)  # our window bounds what paho holds, not paho
        client.will_set(self._topics.status, self._status_payload("offline", "connection lost"),
                        qos=1, retain=True)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )  # paho checks the server's hostname against its certificate by default
        if cfg.username is not None:
            client.username_pw_set(cfg.username, _read_secret(cfg.password_file))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _serve(self, client: mqtt.Client) -> None:
        """Run one connection until it drops or we stop."""
        started = self._clock()
        while True:
            sock = client.socket()
            if sock is None:
                break
            now = self._clock()
            self.heartbeat = now
            if self.state is LinkState.CONNECTING and now - started > self._connack_timeout_s:
                self._fail("no CONNACK from the broker in time")
                client.disconnect()
                break
            if self._stopping.is_set():
                self._shutdown(client)
                break
            if self.state is LinkState.ONLINE and self._dirty:
                self._pump(client)
            want_w = [sock] if client.want_write() else []
            readable, writable, _ = select.select([sock, self._wake_r], want_w, [], 1.0)
            if self._wake_r in readable:
                self._drain_wake()
                self._dirty = True
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            if sock in readable:
                rc = client.loop_read()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and writable and client.socket() is not None:
                rc = client.loop_write()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = client.loop_misc()  # keepalive pings; drops a link whose PINGRESP is late
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                if self.state is not LinkState.OFFLINE:
                    self._fail(f"connection lost: {mqtt.error_string(rc)}")
                break
        _close_quietly(client)

    def _pump(self, client: mqtt.Client) -> None:
        """Hand paho every waiting alarm, then other classes up to the window."""
        self._dirty = False
        try:
            busy = set(self._inflight_rows()) | self._refused
            batch = self._outbox.next_batch(busy, 64, Priority.ALARM)
            room = self._window - sum(1 for _, p in self._inflight.values() if p != Priority.ALARM)
            if room > 0:
                batch += self._outbox.next_batch(busy | {m.id for m in batch}, room, Priority.CLIP)
        except OutboxError as exc:
            log.error("cannot read the outbox: %s", exc)
            return
        for msg in batch:
            info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._dirty = True
                return  # the link is going down; the row stays READY
            self._inflight[info.mid] = (msg.id, msg.priority)

    def _inflight_rows(self) -> list[int]:
        return [row for row, _ in self._inflight.values()]

    def _shutdown(self, client: mqtt.Client) -> None:
        if self.state is LinkState.ONLINE:
            info = client.publish(self._topics.status,
                                  self._status_payload("offline", "agent stopped"),
                                  qos=1, retain=True)
            self._offline_mid = info.mid
            deadline = self._clock() + 1.5
            while self._offline_mid is not None and self._clock() < deadline:
                if client.loop(timeout=0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        client.disconnect()
        log.info("uplink stopped; published offline")

    def _fail(self, reason: str) -> None:
        self.state = LinkState.OFFLINE
        self.connected_since = None
        if reason != self.last_error:
            log.warning("uplink: %s", reason)
        self.last_error = reason

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

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

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if not self._stopping.is_set():
            self._fail(f"disconnected: {rc}")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        if mid == self._offline_mid:
            self._offline_mid = None
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        row, _prio = entry
        self._dirty = True
        if rc.is_failure:
            self._refused.add(row)
            log.error("broker refused message %d: %s; check the broker ACL for this site", row, rc)
            return
        try:
            self._outbox.ack(row)
            self.sent += 1
        except OutboxError as exc:  # it will be sent again; the centre drops the duplicate
            log.error("cannot delete acknowledged message %d: %s", row, exc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_message_cb is not None:
            try:
                self._on_message_cb(msg.topic, msg.payload)
            except Exception:  # a bad command must never take the uplink down
                log.exception("command handler failed on %s", msg.topic)


def _read_secret(path: os.PathLike[str] | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _close_quietly(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
