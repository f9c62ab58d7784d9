"""The uplink's connections to the broker: set-up, the broker's answers, the link's state.

Each connection gets a fresh paho client. paho keeps unacknowledged messages in memory and
resends them on reconnect, but our outbox is the only record that survives a crash, so we make
it the only record, full stop: after a reconnect every unacked row is simply pumped again with
the same id and the centre drops the duplicate. No state lives in two places.

Uplink thread only (agent/delivery/uplink/link.py); other threads read the state fields for
status only (racy but harmless).
"""

from __future__ import annotations

import enum
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.config.model import MqttConfig
from agent.delivery.protocol import Topics
from agent.delivery.uplink.client import build_client
from agent.delivery.uplink.pacing import Pacer

log = logging.getLogger("agent.uplink")

OnPublish = Callable[[mqtt.Client, Any, int, ReasonCode, Any], None]
OnMessage = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # waiting to retry
    STOPPED = "stopped"


class Connection:
    """Makes each connection and says, once, why one failed or ended. ``on_online`` runs when
    the broker accepts a connection, so that whatever waits is handed over at once."""

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        status_payload: Callable[[str, str], bytes],
        subscriptions: tuple[str, ...],
        *,
        backoff: Backoff,
        pacer: Pacer,
        stopping: threading.Event,
        on_online: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self._cfg = cfg
        self._topics = topics
        self._status_payload = status_payload
        self._subscriptions = subscriptions
        self._backoff = backoff
        self._pacer = pacer
        self._stopping = stopping
        self._on_online = on_online
        self._clock = clock
        self._offline_mid: int | None = None
        self._socket_error = ""  # the last socket failure paho logged (a TLS alert, say)
        self.state = LinkState.OFFLINE
        self.last_error = ""
        self.connected_since: float | None = None
        self.failures = 0  # connections failed or lost since the start

    def connect(
        self, alarm_waiting: Callable[[], bool], on_publish: OnPublish, on_message: OnMessage
    ) -> mqtt.Client | None:
        """A fresh client, connecting (CONNACK comes later, in loop_read); None on failure."""
        self.state = LinkState.CONNECTING
        try:
            client = self._new_client(on_publish, on_message)
            # A black-holed link makes connect() wait out its timeout: shorter while an alarm
            # waits, so the alarm goes within ~1.5 s of the link returning.
            client.connect_timeout = 2.0 if alarm_waiting() else 5.0
            client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS (SSLError is OSError)
            self.fail(f"cannot connect to {self._cfg.host}:{self._cfg.port}: {exc}")
            return None
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Writable only while little is unsent (the pacer's low-water mark, and its pacing):
            # bounds what an alarm queues behind.
            self._pacer.attach(sock)
        return client

    def _new_client(self, on_publish: OnPublish, on_message: OnMessage) -> mqtt.Client:
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
        client.on_publish = on_publish
        client.on_message = on_message
        return client

    def shutdown(self, client: mqtt.Client) -> None:
        """Publish offline (a clean DISCONNECT suppresses the will), then disconnect."""
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

    def published(self, mid: int) -> None:
        """The broker's PUBACK for ``mid``: the offline status, perhaps, that shutdown awaits."""
        if mid == self._offline_mid:
            self._offline_mid = None

    def fail(self, reason: str) -> None:
        self.failures += 1
        self.state = LinkState.OFFLINE
        self.connected_since = None
        if reason != self.last_error:
            log.warning("uplink: %s", reason)
        self.last_error = reason

    def lost(self, why: str) -> None:
        """The connection ended; say why once (paho's on_disconnect may have said it)."""
        if self.state is not LinkState.OFFLINE:
            self.fail(f"connection lost: {self._socket_error or why}")

    # --- paho callbacks (run on the uplink thread, inside loop_read/loop_write) -------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self.fail(f"broker refused the connection: {rc}")  # e.g. not authorised
            return
        self.state = LinkState.ONLINE
        self.connected_since = time.time()
        self.last_error = ""
        self._backoff.reset()
        self._on_online()
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
            self.fail(f"disconnected: {rc}")
        elif "alert" in self._socket_error and "certificate" in self._socket_error:
            self.fail(
                f"the broker refused this box's certificate ({self._socket_error}): check "
                "mqtt.tls.cert_file and key_file, and that the certificate is neither "
                "expired nor revoked"
            )
        else:
            self.fail(f"connection lost: {self._socket_error}")

    def _on_log(self, _c: mqtt.Client, _u: Any, level: int, message: str) -> None:
        """paho reports why a TLS socket died (the broker's alert) only in its log."""
        if level == mqtt.MQTT_LOG_ERR and message.startswith("failed to receive on socket: "):
            self._socket_error = message.removeprefix("failed to receive on socket: ")
