"""The production broker of docs/broker.md, run as written, and MQTT 5 clients that keep every
answer it gives: shared by the broker security tests and the adversarial suite (tests/adversarial),
which attacks the centre through exactly this broker, as a box with only its own topics.

The mosquitto.conf and ACL blocks are read from docs/broker.md; only paths, ports and (if asked)
the topic prefix change, so the tested configuration cannot drift from the documented one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.testing.broker import Mosquitto, free_port
from tests.conftest import REPO, wait_for
from tests.pki import Identity, Pki

DOC = REPO / "docs" / "broker.md"


# --- the broker, configured from docs/broker.md ---------------------------------------------


def doc_blocks() -> dict[str, str]:
    """The ```conf blocks of docs/broker.md, by the path on their first line."""
    text = DOC.read_text(encoding="utf-8")
    return {m[1]: m[2] for m in re.finditer(r"```conf\n# (\S+)\n(.*?)```", text, re.DOTALL)}


@dataclass
class Broker:
    mosquitto: Mosquitto
    box_port: int
    centre_port: int

    def log(self) -> str:
        return (self.mosquitto.workdir / "mosquitto.log").read_text(errors="replace")

    def reload(self) -> None:
        """SIGHUP, as `systemctl reload mosquitto` sends; returns once the broker has reloaded."""
        assert self.mosquitto.proc is not None
        done = self.log().count("Reloading config.") + 1
        os.kill(self.mosquitto.proc.pid, signal.SIGHUP)
        wait_for(lambda: self.log().count("Reloading config.") >= done, 5, "the reload")


def start_broker(workdir: Path, pki: Pki, *, server: Identity | None = None,
                 crl: Path | None = None, without: tuple[str, ...] = (),
                 prefix: str = "schools", log_info: bool = True) -> Broker:
    """Mosquitto with the documented configuration; `without` drops lines, to show they matter;
    `prefix` replaces the topic prefix in the ACLs, as docs/broker.md says to."""
    workdir.mkdir(parents=True)
    blocks = doc_blocks()
    server = server or pki.server
    box_port, centre_port = free_port(), free_port()
    files = {
        "/etc/mosquitto/certs/broker.crt": server.cert,
        "/etc/mosquitto/certs/broker.key": server.key,
        "/etc/mosquitto/ca_certificates/box-ca.crt": pki.box_ca,
        "/etc/mosquitto/ca_certificates/box-ca.crl": crl or pki.box_crl,
        "/etc/mosquitto/ca_certificates/centre-ca.crt": pki.centre_ca,
    }
    for name in ("box.acl", "centre.acl"):
        acl = workdir / name
        acl.write_text(blocks[f"/etc/mosquitto/{name}"].replace(" schools/", f" {prefix}/"))
        files[f"/etc/mosquitto/{name}"] = acl
    conf = blocks["/etc/mosquitto/conf.d/schools.conf"]
    for line in without:
        assert f"\n{line}\n" in conf, f"docs/broker.md has no line {line!r}"
        conf = conf.replace(f"\n{line}\n", "\n")
    for path, local in files.items():
        conf = conf.replace(f" {path}\n", f" {local}\n")
    conf, boxes = re.subn(r"^listener 8883$", f"listener {box_port} 127.0.0.1", conf,
                          flags=re.M)
    conf, centres = re.subn(r"^listener 8884 \S+$", f"listener {centre_port} 127.0.0.1", conf,
                            flags=re.M)
    assert (boxes, centres) == (1, 1) and "/etc/" not in conf, "docs/broker.md changed: update me"
    broker = Mosquitto(workdir, port=box_port, listeners=conf,
                       extra_conf="log_type notice\nlog_type information" if log_info else "")
    broker.start()
    return Broker(broker, box_port, centre_port)


# --- MQTT 5 clients that record what the broker answers ---------------------------------------


class Peer:
    """A paho client with a certificate (or none) that keeps every answer of the broker.

    It runs paho's network thread (``loop_start``) without reconnecting
    (``reconnect_on_failure=False``): a peer that is refused or replaced stays gone, so tests
    see it. In that mode paho's publish() and subscribe() from the test's thread only queue, and
    paho's thread alone writes the socket: two threads writing one TLS socket broke its records
    now and then ("bad record mac", a PUBACK that never came).
    """

    def __init__(self, port: int, pki: Pki, identity: Identity | None, *, client_id: str = "",
                 username: str | None = None, will_topic: str | None = None,
                 protocol: MQTTProtocolVersion = mqtt.MQTTv5, tls: bool = True) -> None:
        self.port = port
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                        reconnect_on_failure=False)
        if tls:
            c.tls_set(ca_certs=str(pki.box_ca), cert_reqs=ssl.CERT_REQUIRED,
                      certfile=str(identity.cert) if identity else None,
                      keyfile=str(identity.key) if identity else None)
        if username is not None:
            c.username_pw_set(username)
        if will_topic is not None:
            c.will_set(will_topic, b"offline (will)", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c
        self.lock = threading.Lock()
        self.connack: ReasonCode | None = None
        self.error = ""  # why the connection failed or ended
        self.gone = threading.Event()
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[tuple[str, bytes]] = []

    def connect(self, timeout: float = 5.0) -> Peer:
        try:
            self.client.connect("localhost", self.port, keepalive=5)
        except OSError as exc:  # ssl.SSLError included: the handshake runs inside connect()
            self.error = str(exc)
            self.gone.set()
            return self
        self.client.loop_start()
        wait_for(lambda: self.connack is not None or self.gone.is_set(), timeout, "CONNACK")
        return self

    @property
    def online(self) -> bool:
        return self.connack is not None and not self.connack.is_failure and not self.gone.is_set()

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 1) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=qos)
        wait_for(lambda: info.mid in self.acks, 5, f"PUBACK for {topic}")
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        wait_for(lambda: mid in self.subacks, 5, f"SUBACK for {topic}")
        return self.subacks[mid]

    def received(self, topic_filter: str = "#") -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for t, p in self.messages if mqtt.topic_matches_sub(topic_filter, t)]

    def wait_message(self, topic: str, payload: bytes | None = None, timeout: float = 5.0) -> None:
        wait_for(lambda: any(p == payload or payload is None for _, p in self.received(topic)),
                 timeout, f"a message on {topic}")

    def drop(self) -> None:
        """Cut the TCP connection without DISCONNECT, as a box losing power: the will fires."""
        sock = self.client.socket()
        assert sock is not None, self.error
        sock.shutdown(socket.SHUT_RDWR)  # paho's thread sees the end and stops (no reconnect)
        self.gone.wait(2.0)
        self.client.loop_stop()

    def close(self) -> None:
        if not self.gone.is_set():
            self.client.disconnect()
            self.gone.wait(1.0)
        self.client.loop_stop()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connack = rc

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.error = self.error or str(rc)
        self.gone.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self.acks[mid] = rc

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        self.subacks[mid] = rcs

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))


