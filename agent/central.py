"""The centre's reference receiver (``edge-agent central``): what the ЦОУ runs, kept small.

It subscribes to every site under the prefix with a persistent MQTT session (the broker queues
for it while it restarts), keeps alarms, site states and seq gaps in its ledger (SQLite, see
agent/ledger.py), appends each alarm once to ``alarms.jsonl`` (dedup by event_id), and
rebuilds clips from chunks that may arrive in any order and more than once: a segment is kept
when all its chunks are in and its sha256 matches, and a clip is written, as one playable
MPEG-TS file per camera, once every segment up to the final one is in.

Threading: paho's network thread (loop_start) runs every callback; the receiver's state is
touched only there, so it needs no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.delivery.protocol import (
    ChunkHeader,
    Receipt,
    Topics,
    centre_presence_topic,
    decode_chunk,
    parse_alarm,
    presence_payload,
)
from agent.errors import AgentError, ProtocolError
from agent.ledger import Ledger
from agent.video.chain import (
    Link,
    chain_problem,
    clip_statement,
    load_public_pem,
    signature_ok,
)

log = logging.getLogger("agent.central")

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _safe_name(text: str) -> str:
    """Names from the wire become path parts only if they cannot climb out of the store."""
    if not text or len(text) > 64 or not set(text.lower()) <= _SAFE:
        raise ProtocolError(f"unsafe name on the wire: {text[:80]!r}")
    return text


@dataclass
class _Segment:
    header: ChunkHeader
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass
class _Live:
    last: int = -1  # the last segment appended
    assembling: dict[int, _Segment] = field(default_factory=dict)


@dataclass
class _Clip:
    segments: dict[int, bytes] = field(default_factory=dict)  # position -> verified bytes
    headers: dict[int, ChunkHeader] = field(default_factory=dict)
    final: int | None = None
    assembling: dict[int, _Segment] = field(default_factory=dict)
    written: bool = False


class Receiver:
    def __init__(self, store: Path, topic_prefix: str = "schools",
                 on_alarm: Callable[[dict[str, Any]], None] | None = None,
                 share: str | None = None) -> None:
        self.store = store
        self.prefix = topic_prefix
        self.on_alarm = on_alarm
        self.share = share
        self.ledger: Ledger | None = None
        self._clips: dict[tuple[str, str, str], _Clip] = {}
        self._lives: dict[tuple[str, str, str], _Live] = {}
        self.connected = threading.Event()

    # --- wiring -----------------------------------------------------------------------------

    def load(self) -> None:
        """Open the ledger: it remembers what is stored, so a redelivery is a no-op."""
        self.ledger = Ledger.open(self.store)

    def subscriptions(self) -> list[str]:
        """With ``share``, alarms are split among the receivers of a group (MQTT 5 shared
        subscriptions), each handled once. Status is retained, which shared subscriptions do
        not deliver, and a clip must be rebuilt from all its chunks, so every receiver takes
        those."""
        alarms = f"{self.prefix}/+/alarm"
        return [f"$share/{self.share}/{alarms}" if self.share else alarms,
                f"{self.prefix}/+/status", f"{self.prefix}/+/clip/+", f"{self.prefix}/+/live/+",
                f"{self.prefix}/+/pubkey"]

    def handle(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Store what arrived; return the receipts to publish (topic, payload)."""
        parts = topic.split("/")
        if len(parts) < 3:
            return []
        site, kind = parts[-2], parts[-1]
        try:
            if len(parts) >= 4 and parts[-2] == "clip":  # before the others: a camera may be
                clip = self._chunk(parts[-3], parts[-1], payload)  # named "alarm"
                return [self._receipt(parts[-3], Receipt(clips=(clip,)))] if clip else []
            if len(parts) >= 4 and parts[-2] == "live":
                self._live_chunk(_safe_name(parts[-3]), _safe_name(parts[-1]), payload)
                return []
            if kind == "alarm":
                event_id = self._alarm(site, payload)
                return [self._receipt(site, Receipt(alarms=(event_id,)))]
            if kind == "status":
                self._status(site, payload)
            if kind == "pubkey":
                self._pubkey(_safe_name(site), payload)
        except (ProtocolError, ValueError) as exc:
            log.warning("dropping a bad message on %s: %s", topic, exc)
        return []

    def _receipt(self, site: str, receipt: Receipt) -> tuple[str, bytes]:
        return Topics(self.prefix, site).receipt, receipt.to_json()

    # --- alarms and status ------------------------------------------------------------------

    def _alarm(self, site: str, payload: bytes) -> str:
        """Store a new alarm; a duplicate is confirmed again (the box is still waiting)."""
        alarm = parse_alarm(payload)
        _safe_name(site)
        if alarm.site_id != site:
            raise ProtocolError(f"alarm for site {alarm.site_id} on the topic of {site}")
        assert self.ledger is not None
        stored = self.ledger.add_alarm(alarm, payload)
        if not stored.new:
            return alarm.event_id
        record = json.loads(payload)
        with open(self.store / "alarms.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.warning("ALARM site=%s button=%s location=%r kind=%s seq=%d at=%s%s", site,
                    alarm.button_id, alarm.location, alarm.kind, alarm.seq, alarm.pressed_at,
                    " (TEST)" if alarm.test else "")
        if stored.gap_opened:
            log.error("site %s: alarms seq %d..%d are missing so far", site, *stored.gap_opened)
        if stored.gap_closed:
            log.info("site %s: missing alarm seq %d arrived", site, alarm.seq)
        if self.on_alarm is not None:
            self.on_alarm(record)
        return alarm.event_id

    def _pubkey(self, site: str, pem: bytes) -> None:
        """Pin each box's key: registered at install in keys/, or else trusted on first use."""
        try:
            load_public_pem(pem)
        except ValueError as exc:
            raise ProtocolError(f"not a public key: {exc}") from exc
        path = self.store / "keys" / f"{site}.pub"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pem)
            log.warning("site %s: box key trusted on first use (%s); register box keys at "
                        "install to close that gap", site, path)
        elif path.read_bytes().strip() != pem.strip():
            log.error("site %s presented a DIFFERENT box key; keeping the pinned one (%s). If "
                      "the box was replaced, put its new key there", site, path)

    def _verify(self, site: str, event: str, camera: str, clip: _Clip) -> str:
        """Why this clip cannot be trusted; "" when its chain and signature hold."""
        assert clip.final is not None
        headers = [clip.headers[i] for i in range(clip.final + 1)]
        problem = chain_problem([Link(h.sha256, h.prev, h.link) for h in headers])
        if problem:
            return problem
        path = self.store / "keys" / f"{site}.pub"
        if not path.exists():
            return f"no box key for site {site} in {path.parent}"
        statement = clip_statement(site, event, camera, headers[0].prev, headers[-1].link,
                                   len(headers))
        if not signature_ok(load_public_pem(path.read_bytes()), statement, headers[-1].sig):
            return "the box's signature does not match (forged, cut short or re-signed)"
        return ""

    def _status(self, site: str, payload: bytes) -> None:
        if not payload:
            return
        state = json.loads(payload)
        if not isinstance(state, dict):
            raise ProtocolError("status is not a JSON object")
        assert self.ledger is not None
        if self.ledger.site_status(_safe_name(site), state):
            log.info("site %s is %s (%s)", site, state.get("state"), state.get("reason", ""))

    # --- clips ------------------------------------------------------------------------------

    def _chunk(self, site: str, camera: str, payload: bytes) -> tuple[str, str] | None:
        """Keep a chunk; returns (event_id, camera) when it completed (or repeats) a clip."""
        header, data = decode_chunk(payload)
        site, camera = _safe_name(site), _safe_name(camera)
        event = _safe_name(header.event_id)
        if header.camera_id != camera:
            raise ProtocolError(f"chunk of camera {header.camera_id} on the topic of {camera}")
        clip = self._clips.setdefault((site, event, camera), _Clip())
        if clip.written:
            return event, camera  # the box resends until confirmed: confirm again
        if header.segment in clip.segments:
            return None  # a duplicate
        seg = clip.assembling.setdefault(header.segment, _Segment(header))
        if (seg.header.sha256, seg.header.chunks) != (header.sha256, header.chunks):
            raise ProtocolError(f"chunk {header.message_id} disagrees with its segment")
        seg.chunks[header.chunk] = data
        if header.final:
            clip.final = header.segment
        if len(seg.chunks) < header.chunks:
            return None
        body = b"".join(seg.chunks[i] for i in range(header.chunks))
        del clip.assembling[header.segment]
        if hashlib.sha256(body).hexdigest() != header.sha256 or len(body) != header.size:
            log.error("clip %s/%s/%s segment %d failed its sha256 check; dropped",
                      site, event, camera, header.segment)
            return None
        clip.segments[header.segment] = body
        clip.headers[header.segment] = header
        if clip.final is not None and all(i in clip.segments for i in range(clip.final + 1)):
            self._write_clip(site, event, camera, clip)
            return event, camera
        return None

    def _live_chunk(self, site: str, camera: str, payload: bytes) -> None:
        """Live segments are appended, in order, to a growing file that plays while it grows;
        a segment the box skipped (the link was behind) is simply not there."""
        header, data = decode_chunk(payload)
        session = _safe_name(header.event_id)
        live = self._lives.setdefault((site, session, camera), _Live())
        if header.segment <= live.last:
            return
        seg = live.assembling.setdefault(header.segment, _Segment(header))
        seg.chunks[header.chunk] = data
        if len(seg.chunks) < header.chunks:
            return
        body = b"".join(seg.chunks[i] for i in range(header.chunks))
        live.assembling = {k: v for k, v in live.assembling.items() if k > header.segment}
        if hashlib.sha256(body).hexdigest() != header.sha256:
            log.error("live %s/%s segment %d failed its sha256 check", site, camera, header.segment)
            return
        folder = self.store / site / "live" / session
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{camera}.ts", "ab") as f:
            f.write(body)
        live.last = header.segment
        if header.final:
            log.info("live %s from %s/%s ended (%d segments)", session, site, camera,
                     header.segment + 1)
            del self._lives[(site, session, camera)]

    def _write_clip(self, site: str, event: str, camera: str, clip: _Clip) -> None:
        assert clip.final is not None
        folder = self.store / site / event
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{camera}.ts"
        tmp = folder / f".{camera}.ts.tmp"
        with open(tmp, "wb") as f:
            for i in range(clip.final + 1):
                f.write(clip.segments[i])
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(final)
        problem = self._verify(site, event, camera, clip)
        (folder / f"{camera}.verify.json").write_text(json.dumps(
            {"verified": not problem, "problem": problem, "segments": clip.final + 1}))
        clip.written = True
        clip.segments.clear()
        clip.headers.clear()
        assert self.ledger is not None
        self.ledger.add_clip(site, event, camera, final, clip.final + 1, problem)
        if problem:
            log.error("clip %s FAILED verification: %s", final, problem)
        else:
            log.info("clip written and verified: %s (%d segments)", final, clip.final + 1)


def run_receiver(broker: str, topic_prefix: str, store: Path, client_id: str | None = None,
                 stop: threading.Event | None = None,
                 on_alarm: Callable[[dict[str, Any]], None] | None = None,
                 share: str | None = None) -> None:
    """Connect, subscribe, and hand every message to a Receiver until ``stop`` is set."""
    url = urlparse(broker)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        raise AgentError(f"--broker must look like mqtt://HOST:PORT, not {broker!r}")
    receiver = Receiver(store, topic_prefix, on_alarm, share)
    receiver_id = client_id or f"edge-central-{socket.gethostname()}"
    receiver.load()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=receiver_id)
    if url.scheme == "mqtts":
        client.tls_set()

    presence = centre_presence_topic(topic_prefix, re.sub(r"[^A-Za-z0-9_.-]", "_", receiver_id))
    client.will_set(presence, presence_payload("offline", time.time()), qos=1, retain=True)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the receiver: %s", rc)
            return
        for topic in receiver.subscriptions():
            c.subscribe(topic, qos=1)
        c.publish(presence, presence_payload("online", time.time()), qos=1, retain=True)
        receiver.connected.set()
        log.info("receiver connected to %s, store %s", broker, store)

    client.on_connect = on_connect
    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            replies = receiver.handle(msg.topic, bytes(msg.payload))
        except Exception:  # a failure on one message must not silence the centre for all
            log.exception("receiver failed on a message on %s; carrying on", msg.topic)
            return
        for topic, payload in replies:
            c.publish(topic, payload, qos=1)

    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 7 * 24 * 3600  # the broker queues for us for a week
    client.connect_async(url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883),
                         keepalive=10, clean_start=False, properties=props)
    client.loop_start()
    try:
        (stop or threading.Event()).wait()
    finally:
        info = client.publish(presence, presence_payload("offline", time.time()), qos=1,
                              retain=True)
        if receiver.connected.is_set():
            with contextlib.suppress(RuntimeError, ValueError):  # not connected after all
                info.wait_for_publish(2)
        client.disconnect()
        client.loop_stop()  # no callback runs after this: the ledger may close
        if receiver.ledger is not None:
            receiver.ledger.close()


# --- commanding a box ---------------------------------------------------------------------------


def site_of_event(store: Path, event_id: str) -> str:
    """Which site raised this alarm, from the receiver's ledger."""
    ledger = Ledger.open(store)
    try:
        site = ledger.site_of(event_id)
    finally:
        ledger.close()
    if site is None:
        raise AgentError(f"no alarm {event_id} in {store}; is --store the receiver's store?")
    return site


def send_command(broker: str, topic_prefix: str, site_id: str, key_file: Path, name: str,
                 args: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Sign a command with the centre's key, publish it, and wait for the box's result."""
    from agent.commands import load_private_key, sign_command

    url = urlparse(broker)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        raise AgentError(f"--broker must look like mqtt://HOST:PORT, not {broker!r}")
    payload = sign_command(load_private_key(key_file), site_id, name, args)
    command_id = json.loads(payload)["id"]
    topics = Topics(topic_prefix, site_id)
    result: list[dict[str, Any]] = []
    got = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            doc = json.loads(msg.payload)
            if isinstance(doc, dict) and doc.get("id") == command_id:
                result.append(doc)
                got.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if url.scheme == "mqtts":
        client.tls_set()
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(topics.cmd_result, qos=1)
    try:
        client.connect(url.hostname, url.port or 1883, keepalive=10)
    except OSError as exc:
        raise AgentError(f"cannot reach the broker {broker}: {exc}") from exc
    client.loop_start()
    try:
        if not subscribed.wait(timeout_s):
            raise AgentError("the broker did not confirm the subscription to results")
        client.publish(topics.cmd, payload, qos=1)  # never retained: a reconnect never replays
        if not got.wait(timeout_s):
            raise AgentError(f"no result from {site_id} within {timeout_s:.0f} s: is the box "
                             "online and does it have the centre's public key?")
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]
