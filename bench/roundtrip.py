"""Acknowledgement round trip and live latency: the agent against bare paho in the same run.

    python3 bench/roundtrip.py                    # 500 presses + 30 s of live view (~70 s)
    python3 bench/roundtrip.py --presses 100 --live-seconds 10 --json
    python3 bench/roundtrip.py --live-seconds 0   # the acknowledgement round trip only

Everything runs on one private Mosquitto (the real broker, free loopback port), in this process:
the real ``Daemon`` on the simulated school (mock GPIO, storage on disk), and the centre's real
receiver (``agent.centre.service.run_receiver``, with its ledger and ``alarms.jsonl`` on disk).

1. Acknowledgement round trip, per press:

       t0 = perf_counter(); MockPin(17).drive_low()
         -> the box commits the alarm and publishes it; the receiver stores it (ledger commit,
            alarms.jsonl fsync) and calls on_alarm
         -> the bench's operator, in on_alarm, signs an ``ack`` for that event_id with the
            centre's key (``agent.commands.keys.sign_command``, what ``edge-agent central ack``
            does) and publishes it on a connection it keeps open (no human in the loop)
         -> the box's uplink thread verifies it (Ed25519, replay cache commit) and calls
            ``Indicators.acknowledged``
       t1 = perf_counter() when ``acknowledged`` returns: the LED (mock pin 5) is steady on.

   t1 is taken by a wrapper around the running daemon's ``indicators.acknowledged`` (the LED
   blinks while the box waits, so the pin's level alone does not say when the pattern changed;
   the bench checks afterwards that the pin reads 1 and the pattern is ``acknowledged``).
   Baselines, interleaved press by press so each sees the same noise, with the same payload
   bytes (the press's real alarm, the real signed ack) and topics of the same length:

       bare      a paho client publishes the alarm bytes at QoS 1; a responder client's
                 on_message publishes the ack bytes at QoS 1; t1 in the requester's on_message.
       durable   the same, plus the four disk syncs the agent's path makes: a SQLite FULL commit
                 before the request (the box's outbox), a SQLite FULL commit and an appended,
                 fsynced line at the responder (the centre's ledger and alarms.jsonl), and a
                 SQLite FULL commit before t1 (the box's replay cache).

   So "agent / durable" is our own code (threads, JSON, signatures, logging), "durable / bare"
   is the disk. Pacing as in bench/alarm_latency.py: one press in flight; after the ack the pin
   is released, the box's outbox settles (alarm confirmed, command result delivered), the two
   baselines run after 5 ms of quiet each, then the bench waits for the board to re-arm (50 ms
   of stable release and the button reported idle) and resets the indicator. The report also
   gives the margin of a race in the agent: how long before the ack reached the indicator the
   buttons thread had called ``Indicators.alarm`` (an ack that comes first is now remembered and
   applied when the alarm reaches the indicator; the margin shows how often that path is used).

2. Live view latency: the same box restarted (same storage, so the same box key) with one
   synthetic camera (320x180, 10 fps, 1 s segments), a signed ``live`` command for
   ``--live-seconds``, and per segment:

       t0 = perf_counter() when the segment's first packet (its keyframe) is handed to the
            Segmenter (a wrapper around the Camera's sink)
       t1 = perf_counter() when the receiver has appended the segment to the growing live file
            (a wrapper around ``Assembler.process``; the file must grow by the segment's size)

   Stages come from a wrapper around the Video's live sender (segment handed to the live feed
   and posted to the uplink) and from the receiver's first chunk of each segment. Baseline,
   at a random moment of the half second after each segment is written (the next is a second
   away): a bare paho client with no loop thread publishes the same chunk payloads back to back
   at QoS 1, t1 when the last one reaches a subscriber (see DirectPublisher, LIVE_JITTER_S). A
   segment can leave only once it is complete, i.e. about segment_s after its first frame: that
   is the floor of this figure, and the report shows it as its own stage.

Hooks wrap methods on the running objects (instance attributes shadow the class's, or, for the
receiver, a subclass of ``agent.centre.service.Receiver`` wraps its desk's and assembler's methods);
no agent code is edited. They cost a few microseconds per press. Percentiles are nearest-rank.

Bounded: every wait has a timeout (exit 1 naming the step), the presses stop after
``--budget-s`` and the live session is bounded by its length plus a margin; the daemons, the
receiver, the bench's clients and the broker are stopped in ``finally``. Run from the
repository root; the storage directory must be on a real disk (the fsyncs are part of the
figures), as in bench/alarm_latency.py, whose helpers this bench reuses.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import select
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "bench"):  # the agent from this checkout; the shared bench helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import av  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from alarm_latency import agent_logs_to, mark_around  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

import agent.centre.service as central  # noqa: E402
from agent.box.daemon import Daemon  # noqa: E402
from agent.centre.ledger import Ledger  # noqa: E402
from agent.centre.link import Endpoint  # noqa: E402
from agent.commands.keys import generate_keypair, load_private_key, sign_command  # noqa: E402
from agent.config import default_config_text, load_config  # noqa: E402
from agent.config.model import Config  # noqa: E402
from agent.delivery.framing import CHUNK_BYTES, live_chunks  # noqa: E402
from agent.delivery.protocol import BoxTopic, Topics, decode_chunk  # noqa: E402
from agent.hardware.buttons import Timing  # noqa: E402
from agent.hardware.indicators import Pattern  # noqa: E402
from agent.sdnotify import Notifier  # noqa: E402
from agent.testing.broker import Mosquitto  # noqa: E402
from agent.testing.stats import (  # noqa: E402
    default_storage_parent,
    describe,
    machine_context,
    percentile,
)
from agent.video.segmenter import Segment  # noqa: E402

TARGET_ACK_P99_MS = 50.0
TARGET_LIVE_P99_MS = 1500.0
SITE = "sim-school"
TOPICS = Topics("schools", SITE)
CENTRE_ID = "bench-centre"
# Same lengths as the agent's topics (schools/sim-school/...): the same bytes on the wire. Not
# under "schools/": the receiver subscribes to schools/+/alarm and schools/+/live/+, and would
# otherwise work on every baseline message while it is being timed.
BARE = Topics("bschool", "bas-school")
DURABLE = Topics("bschool", "dur-school")
BUTTON_PIN = 17  # "entrance": normally open, no hold_s, so the first edge is the alarm
LED_PIN = 5
CAMERA = "entrance-cam"
CAMERA_CFG = {"size": "320x180", "fps": 10, "segment_s": 1}
WAIT_S = 5.0  # any single wait; a press that takes this long is a failure, not a sample
RELEASE_MARGIN_S = 0.010  # beyond release_s before the next press, so the board has re-armed
SETTLE_S = 0.005  # quiet before each baseline (see bench/alarm_latency.py)
LIVE_START_S = 20.0  # camera start-up: the first segment in the ring
LIVE_MARGIN_S = 15.0  # beyond --live-seconds for the session's final segment
LIVE_JITTER_S = 0.5  # the live baseline starts at a random moment of the next half second
# The bench's own clients never ping during a run (a PINGRESP awaiting a delayed ACK can stall
# the next publish by 40 ms); the agent and the receiver keep their own keepalives.
KEEPALIVE_S = 600
# The live baseline's send buffer: room for a whole segment, so its floor is the broker and the
# subscriber, not the kernel's buffer autotuning. Measured without it: in some runs every send
# waited on the socket and the "floor" was 10-12 ms at p50 instead of 1.2-1.4 ms.
SNDBUF_BYTES = 1 << 20


class BenchError(RuntimeError):
    """The bench could not complete: says which step and what to check."""


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def _connect(client: mqtt.Client, port: int, subscribed: threading.Event | None = None) -> None:
    """Connect with TCP_NODELAY, as the agent's uplink does, so the comparison is of code, not
    of socket options; loop_start; wait for the SUBACK (or the CONNACK)."""
    ready = subscribed or threading.Event()
    if subscribed is None:
        client.on_connect = lambda *_: ready.set()
    client.connect("127.0.0.1", port, keepalive=KEEPALIVE_S)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    if not ready.wait(WAIT_S):
        raise BenchError(f"{client._client_id!r} got no CONNACK/SUBACK from the broker")


def _stop_client(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _full_db(path: Path) -> sqlite3.Connection:
    """A WAL, synchronous=FULL SQLite file, as the outbox, the replay cache and the ledger."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, payload BLOB)")
    return db


def _commit(db: sqlite3.Connection, payload: bytes) -> None:
    with db:  # BEGIN ... COMMIT: the WAL fsync happens here
        db.execute("INSERT INTO m (payload) VALUES (?)", (payload,))


# --- the acknowledgement round trip: timestamps from wrappers on the running objects ----------


class AckTrace:
    """Timestamps (perf_counter) of one press on its way round, taken on whichever thread
    crosses a hook. Each mark keeps its FIRST value after ``arm``; ``done`` is set when the box
    has applied (or refused to show) the ack for this press's event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards everything below; held only to copy or assign
        self._armed = False
        self._marks: dict[str, float] = {}
        self._busy: list[tuple[float, float]] = []  # the box's uplink-thread outbox commits
        self.event_id: str | None = None  # set by the centre when the alarm arrives
        self.shown: bool | None = None  # what Indicators.acknowledged returned
        self.alarm_payload = b""  # the first alarm's bytes, and the first ack's: baseline sizes
        self.ack_payload = b""
        self.command_id: str | None = None
        self.done = threading.Event()

    def arm(self, t0: float) -> None:
        with self._lock:
            self._armed, self._marks, self._busy = True, {"t0": t0}, []
            self.event_id = self.shown = self.command_id = None
            self.done.clear()

    def mark(self, name: str, at: float | None = None) -> None:
        at = time.perf_counter() if at is None else at
        with self._lock:
            if self._armed:
                self._marks.setdefault(name, at)

    def busy(self, t_in: float, t_out: float) -> None:
        with self._lock:
            if self._armed:
                self._busy.append((t_in, t_out))

    def take(self) -> dict[str, float]:
        """The press's marks, plus how long the box's uplink thread spent in outbox commits
        (PUBACK mark, receipt delete) between the ack's publish and its arrival on that thread."""
        with self._lock:
            self._armed = False
            row = dict(self._marks)
            a, b = row.get("ack_sent"), row.get("box_rx")
            if a is not None and b is not None:
                row["busy_s"] = sum(max(0.0, min(o, b) - max(i, a)) for i, o in self._busy)
            return row


def install_ack_hooks(daemon: Daemon, trace: AckTrace) -> None:
    """Shadow bound methods with timing wrappers on the instances; the classes are untouched."""
    assert daemon.uplink and daemon.router and daemon.indicators and daemon.outbox
    assert daemon._nonces is not None
    uplink, router, indicators, outbox, nonces = (daemon.uplink, daemon.router,
                                                  daemon.indicators, daemon.outbox,
                                                  daemon._nonces)
    on_message = uplink._on_message_cb
    assert on_message is not None

    def timed_on_message(topic: str, payload: bytes) -> None:
        if topic == TOPICS.cmd:
            trace.mark("box_rx")
        on_message(topic, payload)

    uplink._on_message_cb = timed_on_message

    mark_around(router._verifier, "verify", trace.mark, before="verify_in")
    mark_around(nonces, "seen_or_add", trace.mark, "nonce_in", "nonce_out")
    mark_around(outbox, "add_alarm", trace.mark, after="committed")

    publish = uplink._publish

    def timed_publish(client: Any, msg: Any) -> bool:
        try:
            return publish(client, msg)
        finally:
            if msg.topic == TOPICS.alarm:
                trace.mark("alarm_out")

    uplink._publish = timed_publish  # type: ignore[method-assign]

    # the buttons thread is about to take the indicator's lock
    mark_around(indicators, "alarm", trace.mark, before="to_indicator")

    acknowledged = indicators.acknowledged

    def timed_acknowledged(event_id: str) -> bool:
        trace.mark("ack_in")
        shown = acknowledged(event_id)
        t1 = time.perf_counter()  # the pattern is applied: the LED is steady on
        if event_id == trace.event_id:
            trace.mark("ack_out", t1)
            trace.shown = shown
            trace.done.set()
        return shown

    indicators.acknowledged = timed_acknowledged  # type: ignore[method-assign]

    for name in ("mark_delivered", "confirm"):  # the uplink thread's commits around an alarm
        original = getattr(outbox, name)

        def timed(*a: Any, _original: Callable[..., Any] = original, **kw: Any) -> Any:
            t_in = time.perf_counter()
            try:
                return _original(*a, **kw)
            finally:
                trace.busy(t_in, time.perf_counter())

        setattr(outbox, name, timed)


# --- live view: timestamps per segment --------------------------------------------------------


@dataclass
class LiveSeg:
    seq: int
    final: bool
    size: int
    chunks: int
    duration: float
    start_wall: float  # Segment.start: the first packet's capture time (wall clock)
    first_in: float | None  # perf_counter when that packet entered the Segmenter
    first_in_wall: float | None
    close_in: float  # perf_counter when the keyframe that closed the segment entered it
    emitted: float  # handed to the live feed's sender (muxed, hashed, in the ring)
    posted: float  # live_chunks built and posted to the uplink (set just after)
    segment: Segment
    session: str
    rx_first: float | None = None  # first chunk at the receiver
    rx_chunks: int = 0  # chunks of it the receiver was handed (duplicates included)
    written: float | None = None  # appended to the live file
    written_wall: float | None = None
    grew_by_size: bool = False
    bare_s: float | None = None  # baseline: the same chunks over bare paho


class LiveTrace:
    """Per-segment timestamps; keyed by the segment's sha256 (one live session at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the dicts; held only to read or assign
        self._first_in: dict[float, tuple[float, float]] = {}  # keyframe wallclock -> times
        self.current_in = 0.0  # camera thread only: the packet being handed in right now
        self.segs: dict[str, LiveSeg] = {}
        self.written: queue.Queue[str] = queue.Queue()
        self.other_rx = 0

    def packet_in(self, wallclock: float, keyframe: bool) -> None:
        t = time.perf_counter()
        self.current_in = t
        if keyframe:  # only a keyframe can start a segment
            with self._lock:
                self._first_in[wallclock] = (t, time.time())
                if len(self._first_in) > 64:
                    for k in sorted(self._first_in)[:32]:
                        del self._first_in[k]

    def emitted(self, session: str, segment: Segment, seq: int, final: bool, t: float) -> LiveSeg:
        """Recorded BEFORE the segment is posted: its chunks may reach the receiver before the
        camera thread runs again (seen under load: a segment then looked lost)."""
        with self._lock:
            first = self._first_in.get(segment.start)
            seg = self.segs[segment.sha256] = LiveSeg(
                seq=seq, final=final, size=len(segment.data),
                chunks=max(1, -(-len(segment.data) // CHUNK_BYTES)), duration=segment.duration,
                start_wall=segment.start, first_in=first[0] if first else None,
                first_in_wall=first[1] if first else None, close_in=self.current_in,
                emitted=t, posted=t, segment=segment, session=session)
            return seg

    def chunk_at_receiver(self, sha256: str, t_in: float, t_out: float | None,
                          grew_by_size: bool) -> None:
        with self._lock:
            seg = self.segs.get(sha256)
            if seg is None:
                self.other_rx += 1
                return
            seg.rx_chunks += 1
            if seg.rx_first is None:
                seg.rx_first = t_in
            if t_out is not None and seg.written is None:
                seg.written, seg.written_wall, seg.grew_by_size = t_out, time.time(), grew_by_size
        if t_out is not None:
            self.written.put(sha256)


def install_live_hooks(daemon: Daemon, trace: LiveTrace) -> None:
    assert daemon.video is not None
    camera = daemon.video.cameras[CAMERA]
    sink = camera._sink

    def timed_sink(pkt: Any) -> None:
        trace.packet_in(pkt.wallclock, pkt.keyframe)
        sink(pkt)

    camera._sink = timed_sink
    send = daemon.video._on_live
    assert send is not None

    def timed_send(camera_id: str, session: str, segment: Segment, seq: int,
                   final: bool) -> None:
        seg = trace.emitted(session, segment, seq, final, time.perf_counter())
        send(camera_id, session, segment, seq, final)
        seg.posted = time.perf_counter()  # (a float assignment: atomic for the readers)

    daemon.video._on_live = timed_send


# --- the centre: the real receiver, plus an operator who acknowledges at once -----------------


class BenchReceiver(central.Receiver):
    """The real Receiver with two timestamps: an alarm's arrival (its link hands it to the alarm
    desk), a live segment's append (the video thread has processed its last chunk)."""

    def __init__(self, ack: AckTrace, live: LiveTrace, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._ack, self._live = ack, live
        self._arrived: dict[tuple[str, int], float] = {}  # (sha256, chunk) -> at the link
        take, video_take, process = self.desk.take, self.assembler.take, self.assembler.process

        def timed_take(topic: BoxTopic, payload: bytes) -> None:
            if topic.kind == "alarm":
                self._ack.mark("centre_rx")
                if not self._ack.alarm_payload:
                    self._ack.alarm_payload = payload
            take(topic, payload)

        def timed_video_take(topic: BoxTopic, payload: bytes) -> None:
            if topic.kind == "live":
                header, _ = decode_chunk(payload, live=True)
                self._arrived[header.sha256, header.chunk] = time.perf_counter()
            video_take(topic, payload)

        def timed_process(site: str, item: Any) -> None:
            header = item.header
            if item.kind != "live" or header is None:
                process(site, item)
                return
            path = self.store / site / "live" / header.event_id / f"{header.camera_id}.ts"
            before = path.stat().st_size if path.exists() else 0
            process(site, item)
            after = path.stat().st_size if path.exists() else 0
            t_out = time.perf_counter() if after > before else None
            t_in = self._arrived.pop((header.sha256, header.chunk), time.perf_counter())
            self._live.chunk_at_receiver(header.sha256, t_in, t_out, after - before == header.size)

        self.desk.take = timed_take  # type: ignore[method-assign]
        self.assembler.take = timed_video_take  # type: ignore[method-assign]
        self.assembler.process = timed_process  # type: ignore[method-assign]


class Operator:
    """The centre's command tool on a connection it keeps open: publishes signed commands and
    collects the box's results (``{prefix}/{site}/cmd/result``)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._cond = threading.Condition()
        self._results: dict[str, dict[str, Any]] = {}  # guarded by _cond
        self._subscribed = threading.Event()
        self.client = _client("bench-operator")
        self.client.on_connect = lambda c, *_: c.subscribe(TOPICS.cmd_result, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        _connect(self.client, self._port, self._subscribed)

    def stop(self) -> None:
        _stop_client(self.client)

    def publish(self, payload: bytes) -> None:
        info = self.client.publish(TOPICS.cmd, payload, qos=1)  # never retained, as the CLI
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BenchError(f"operator publish failed: {mqtt.error_string(info.rc)}")

    def result(self, command_id: str, what: str) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: command_id in self._results, WAIT_S):
                raise BenchError(f"{what}: no command result from the box within {WAIT_S} s")
            return self._results.pop(command_id)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
            with self._cond:
                self._results[doc["id"]] = doc
                self._cond.notify_all()


class Centre:
    """The real receiver, as ``run_receiver`` builds it; its on_alarm is the operator
    acknowledging the alarm at once: sign, publish. Runs on the receiver's alarms thread, after
    the alarm is stored (ledger commit, alarms.jsonl fsync), as a real console would learn of it."""

    def __init__(self, broker: Mosquitto, store: Path, key_file: Path, operator: Operator,
                 ack: AckTrace, live: LiveTrace) -> None:
        self._broker, self._store, self._operator = broker, store, operator
        self._key = load_private_key(key_file)
        self._ack, self._live = ack, live
        self.receiver: BenchReceiver | None = None
        self.acks = True  # acknowledge alarms as they arrive

    def start(self) -> None:
        self.receiver = BenchReceiver(self._ack, self._live, Endpoint.parse(self._broker.url),
                                      TOPICS.prefix, self._store, CENTRE_ID,
                                      Ledger.open(self._store), self._on_alarm)
        self.receiver.start()
        deadline = time.monotonic() + WAIT_S
        while not self.receiver.subscribed:
            if time.monotonic() > deadline:
                raise BenchError("the receiver did not connect to the broker")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()

    def sign(self, name: str, args: dict[str, Any]) -> bytes:
        return sign_command(self._key, SITE, name, args)

    def _on_alarm(self, record: dict[str, Any]) -> None:
        self._ack.mark("centre_stored")
        if not self.acks:
            return
        event_id = str(record["event_id"])
        self._ack.event_id = event_id
        payload = self.sign("ack", {"event_id": event_id})
        self._ack.command_id = json.loads(payload)["id"]  # before the box can answer it
        if not self._ack.ack_payload:
            self._ack.ack_payload = payload
        self._ack.mark("ack_sent")
        self._operator.publish(payload)


# --- the baselines -----------------------------------------------------------------------------


class Responder:
    """A paho client that answers each request with a fixed reply from its on_message: the floor
    of a request/response over the broker. On the durable topic it first commits and fsyncs
    as the centre's receiver does (ledger commit, alarms.jsonl line). It also counts live chunks
    for the live baseline."""

    def __init__(self, port: int, workdir: Path) -> None:
        self._port = port
        self.reply = b""
        self._db = _full_db(workdir / "bare-ledger.db")
        self._jsonl = open(workdir / "bare-alarms.jsonl", "ab")  # noqa: SIM115  # closed in stop
        self._subscribed = threading.Event()
        self._cond = threading.Condition()
        self._chunks_want = 0  # guarded by _cond
        self._chunks_got = 0
        self._chunks_t: float | None = None
        self.client = _client("bench-responder")
        topics = [(BARE.alarm, 1), (DURABLE.alarm, 1), (BARE.live(CAMERA), 1)]
        self.client.on_connect = lambda c, *_: c.subscribe(topics)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        _connect(self.client, self._port, self._subscribed)
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # see SNDBUF_BYTES
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SNDBUF_BYTES)

    def stop(self) -> None:
        _stop_client(self.client)
        self._db.close()
        self._jsonl.close()

    def expect_chunks(self, n: int) -> None:
        with self._cond:
            self._chunks_want, self._chunks_got, self._chunks_t = n, 0, None

    def wait_chunks(self) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: self._chunks_t is not None, WAIT_S):
                raise BenchError(f"baseline: only {self._chunks_got} of {self._chunks_want} "
                                 f"live chunks arrived within {WAIT_S} s")
            assert self._chunks_t is not None
            return self._chunks_t

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == BARE.live(CAMERA):
            t = time.perf_counter()
            with self._cond:
                self._chunks_got += 1
                if self._chunks_got == self._chunks_want:
                    self._chunks_t = t
                    self._cond.notify_all()
            return
        if msg.topic == DURABLE.alarm:
            _commit(self._db, bytes(msg.payload))
            self._jsonl.write(bytes(msg.payload) + b"\n")
            self._jsonl.flush()
            os.fsync(self._jsonl.fileno())
        reply = BARE.cmd if msg.topic == BARE.alarm else DURABLE.cmd
        client.publish(reply, self.reply, qos=1)


class Requester:
    """The box's side of the baselines: publish a request, t1 when the reply arrives (after a
    SQLite FULL commit on the durable topic, as the box's replay cache does)."""

    def __init__(self, port: int, workdir: Path) -> None:
        self._port = port
        self._outbox = _full_db(workdir / "bare-outbox.db")
        self._nonces = _full_db(workdir / "bare-nonces.db")
        self._subscribed = threading.Event()
        self._cond = threading.Condition()
        self._want: str | None = None  # guarded by _cond
        self._t1: float | None = None
        self.client = _client("bench-requester")
        self.client.on_connect = lambda c, *_: c.subscribe([(BARE.cmd, 1), (DURABLE.cmd, 1)])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        _connect(self.client, self._port, self._subscribed)

    def stop(self) -> None:
        _stop_client(self.client)
        self._outbox.close()
        self._nonces.close()

    def round_trip(self, durable: bool, payload: bytes) -> float:
        topics = DURABLE if durable else BARE
        with self._cond:
            self._want, self._t1 = topics.cmd, None
        t0 = time.perf_counter()
        if durable:
            _commit(self._outbox, payload)
        info = self.client.publish(topics.alarm, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BenchError(f"baseline publish failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: self._t1 is not None, WAIT_S):
                raise BenchError(f"baseline: no reply on {topics.cmd} within {WAIT_S} s")
            assert self._t1 is not None
            t1 = self._t1
        info.wait_for_publish(WAIT_S)  # untimed: the request's PUBACK
        return t1 - t0

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == DURABLE.cmd:
            _commit(self._nonces, bytes(msg.payload))
        t1 = time.perf_counter()
        with self._cond:
            if msg.topic == self._want and self._t1 is None:
                self._t1 = t1
                self._cond.notify_all()


class DirectPublisher:
    """The live baseline's sender: a bare paho client driven from the calling thread, with no
    loop thread, so each publish() is written to the socket at once, as the agent's uplink
    thread writes its own. (A loop_start client would add a thread hand-off per chunk and
    fight the caller for the GIL: measured, that made the "floor" slower than the agent.)"""

    def __init__(self, port: int) -> None:
        self._port = port
        self._acked = 0
        self.client = _client("bench-live-publisher")
        self.client.on_publish = lambda *_: self._count()

    def _count(self) -> None:
        self._acked += 1

    def start(self) -> None:
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect("127.0.0.1", self._port, keepalive=KEEPALIVE_S)
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
        deadline = time.monotonic() + WAIT_S
        while not connected.is_set():
            if time.monotonic() > deadline:
                raise BenchError("the live baseline's publisher got no CONNACK")
            self.client.loop(timeout=0.05)

    def stop(self) -> None:
        self.client.disconnect()

    def send(self, topic: str, payloads: list[bytes]) -> None:
        """Timed: every chunk handed to paho and written to the socket."""
        self._acked = 0
        for p in payloads:
            info = self.client.publish(topic, p, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BenchError(f"baseline publish failed: {mqtt.error_string(info.rc)}")
        # What did not fit the socket's buffer at once: wait in select() (which releases the
        # GIL) until there is room. Spinning on loop_write() instead held the GIL against the
        # subscriber's thread: measured, it made half the runs' baselines 11 ms instead of 1.4.
        while self.client.want_write():
            sock = self.client.socket()
            if sock is None:
                raise BenchError("the live baseline's publisher lost its connection")
            select.select([], [sock], [], WAIT_S)
            self.client.loop_write()

    def drain(self, count: int) -> None:
        """Untimed: read the PUBACKs, so the next send starts from a quiet connection."""
        deadline = time.monotonic() + WAIT_S
        while self._acked < count:
            if time.monotonic() > deadline:
                raise BenchError("the live baseline's PUBACKs did not arrive")
            self.client.loop(timeout=0.05)


# --- the run ----------------------------------------------------------------------------------


def box_config(workdir: Path, port: int, public_key: Path, camera: bool) -> Config:
    """The simulated school of agent/data (as tests/conftest.py::write_config makes it) with the
    centre's public key and an LED; one synthetic camera for the live phase, else none."""
    data = yaml.safe_load(default_config_text())
    data["mqtt"]["port"] = port
    data["storage"]["path"] = str(workdir / "state")
    data["commands"] = {"public_key_file": str(public_key)}
    data["indicators"] = {"led_pin": LED_PIN}
    for b in data["buttons"]:
        b.pop("cameras", None)
    data["cameras"] = [{**c, **CAMERA_CFG} for c in data["cameras"] if c["id"] == CAMERA and camera]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def wait_until(pred: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.0005)


class RunningBox:
    """A Daemon started as Daemon.run() starts it, minus the signal handlers: start(), then the
    supervise loop (health, indicator ticks, status reads) on a thread."""

    def __init__(self, cfg: Config) -> None:
        self.factory = MockFactory()  # the pins this bench drives as a finger would
        self.daemon = Daemon(cfg, notifier=Notifier(None), pin_factory=self.factory)
        self._supervise: threading.Thread | None = None

    def start(self) -> Daemon:
        self.daemon.start()
        self._supervise = threading.Thread(target=self.daemon.supervise, name="supervise",
                                           daemon=True)
        self._supervise.start()
        uplink = self.daemon.uplink
        assert uplink is not None
        wait_until(lambda: str(uplink.state) == "online", "the agent's uplink to go online", 10)
        wait_until(lambda: uplink.centre_present is True, "the box to see the centre", 10)
        return self.daemon

    def stop(self) -> None:
        self.daemon.request_stop()
        if self._supervise is not None:
            self._supervise.join(timeout=WAIT_S)
        self.daemon.stop()


@dataclass
class Results:
    ack: list[dict[str, float]] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    durable: list[float] = field(default_factory=list)
    not_shown: int = 0  # acks the box took but did not show (not the event on the indicator)
    alarm_bytes: int = 0
    ack_bytes: int = 0
    truncated: bool = False
    ack_elapsed_s: float = 0.0
    live: list[LiveSeg] = field(default_factory=list)
    live_posted: int = 0
    live_dropped: int = 0
    live_file_ok: bool = True
    live_missing: list[str] = field(default_factory=list)  # posted, never appended: why
    live_uplink: str = ""  # the box's uplink at the end: state, connected since, last error
    live_elapsed_s: float = 0.0
    elapsed_s: float = 0.0


def _settled(depth: dict[str, int]) -> bool:
    return all(depth.get(k, 0) == 0 for k in ("alarm", "unconfirmed", "control"))


def run_acks(args: argparse.Namespace, box: RunningBox, operator: Operator, trace: AckTrace,
             requester: Requester, responder: Responder, res: Results) -> None:
    daemon = box.daemon
    install_ack_hooks(daemon, trace)
    assert daemon.buttons and daemon.outbox and daemon.indicators
    board, outbox, indicators = daemon.buttons, daemon.outbox, daemon.indicators
    pin, led = box.factory.pin(BUTTON_PIN), box.factory.pin(LED_PIN)
    button = next(b.id for b in daemon.cfg.buttons if b.pin == BUTTON_PIN)
    release_s = Timing().release_s
    started = time.monotonic()
    deadline = started + args.budget_s
    total = args.warmup + args.presses
    for i in range(total):
        if time.monotonic() > deadline:
            res.truncated = True
            print(f"budget of {args.budget_s} s reached after {max(0, i - args.warmup)} counted "
                  "presses; reporting those", file=sys.stderr)
            break
        counted = i >= args.warmup

        # The agent: a finger on the button, the centre acknowledges, the LED turns steady.
        t0 = time.perf_counter()
        trace.arm(t0)
        pin.drive_low()
        if not trace.done.wait(WAIT_S):
            raise BenchError(f"press {i}: the indicator was not acknowledged within {WAIT_S} s "
                             f"(marks so far: {sorted(trace.take())})")
        pin.drive_high()
        released = time.perf_counter()
        row = trace.take()
        if trace.shown:
            if indicators.pattern is not Pattern.ACKNOWLEDGED or led.state != 1:
                raise BenchError(f"press {i}: acknowledged, but the indicator shows "
                                 f"{indicators.pattern} and the LED reads {led.state}")
            if counted:
                res.ack.append(row)
        elif counted:
            res.not_shown += 1
        # Untimed: the box's result reaches the operator; the alarm is confirmed and deleted
        # and the result's row is gone (depth() takes the outbox lock: no commit in progress).
        assert trace.command_id is not None
        result = operator.result(trace.command_id, f"press {i}")
        if not result.get("ok"):
            raise BenchError(f"press {i}: the box refused the ack: {result.get('reason')}")
        wait_until(lambda: _settled(outbox.depth()), f"press {i}'s messages to settle")

        # The baselines, inside the board's re-arm window, with the same bytes.
        responder.reply = trace.ack_payload
        for durable, out in ((False, res.bare), (True, res.durable)):
            time.sleep(SETTLE_S)
            took = requester.round_trip(durable, trace.alarm_payload)
            if counted:
                out.append(took)

        rest = released + release_s + RELEASE_MARGIN_S - time.perf_counter()
        if rest > 0:
            time.sleep(rest)
        # And until the board says so: a press seen before its overdue re-arm timer is
        # swallowed (see docs/benchmarks.md, Alarm latency), which a loaded machine triggers.
        wait_until(lambda: board.snapshot()[button]["state"] == "idle",
                   f"button {button} to re-arm after press {i}")
        indicators.reset()
        if i == args.warmup - 1:
            print(f"warm-up done; measuring {args.presses} presses", file=sys.stderr)
    res.ack_elapsed_s = time.monotonic() - started


def run_live(args: argparse.Namespace, box: RunningBox, centre: Centre, operator: Operator,
             trace: LiveTrace, direct: DirectPublisher, responder: Responder,
             res: Results) -> None:
    daemon = box.daemon
    assert daemon.video is not None and daemon.uplink is not None
    install_live_hooks(daemon, trace)
    ring = daemon.video.rings[CAMERA]
    wait_until(lambda: len(ring.segments()) >= 2, "the camera's first segments", LIVE_START_S)
    started = time.monotonic()
    payload = centre.sign("live", {"camera_id": CAMERA, "seconds": args.live_seconds})
    operator.publish(payload)
    result = operator.result(json.loads(payload)["id"], "live command")
    if not result.get("ok"):
        raise BenchError(f"the box refused the live command: {result.get('reason')}")
    session = result["data"]["session"]
    print(f"live session {session} for {args.live_seconds} s", file=sys.stderr)
    dropped_before = daemon.uplink.mailbox.live_dropped
    online_since = daemon.uplink.connected_since
    deadline = started + args.live_seconds + LIVE_MARGIN_S
    final = False
    while not final:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"the live session's final segment did not arrive within "
                             f"{args.live_seconds + LIVE_MARGIN_S:.0f} s")
        try:
            sha = trace.written.get(timeout=min(left, WAIT_S))
        except queue.Empty:
            continue
        seg = trace.segs[sha]
        final = seg.final
        # Baseline in the quiet second before the next segment: the same chunks, bare paho, at
        # a random moment of it. At a fixed delay it kept one phase against the agent's 1 Hz
        # work (the supervise loop, the uplink's select timeout) for a whole run: measured, some
        # runs then had a bare p50 of 4-12 ms and others 1.2 ms.
        time.sleep(SETTLE_S + random.uniform(0, LIVE_JITTER_S))
        chunks = live_chunks(seg.session, seg.segment, seg.seq, seg.final)
        responder.expect_chunks(len(chunks))
        t0 = time.perf_counter()
        direct.send(BARE.live(CAMERA), chunks)
        seg.bare_s = responder.wait_chunks() - t0
        direct.drain(len(chunks))
    res.live_elapsed_s = time.monotonic() - started
    res.live = sorted((s for s in trace.segs.values() if s.session == session),
                      key=lambda s: s.seq)
    res.live_posted = len(res.live)
    res.live_dropped = daemon.uplink.mailbox.live_dropped - dropped_before
    up = daemon.uplink
    res.live_uplink = (f"{up.state}; "
                       f"{'RECONNECTED' if up.connected_since != online_since else 'same'} "
                       f"connection as at the start; last error: {up.last_error or 'none'}")
    res.live_missing = [f"seq {s.seq}: {s.rx_chunks} of {s.chunks} chunks reached the receiver"
                        for s in res.live if s.written is None]
    assert centre.receiver is not None
    path = centre.receiver.store / SITE / "live" / session / f"{CAMERA}.ts"
    written = [s for s in res.live if s.written is not None]
    res.live_file_ok = (path.exists() and path.stat().st_size == sum(s.size for s in written)
                        and all(s.grew_by_size for s in written))


def run(args: argparse.Namespace, workdir: Path) -> Results:
    broker = Mosquitto(workdir / "broker")
    ack_trace, live_trace = AckTrace(), LiveTrace()
    stops: list[Callable[[], None]] = []  # in reverse order of start
    res = Results()
    started = time.monotonic()
    try:
        broker.start()
        stops.append(broker.stop)
        key_file, pub_file = generate_keypair(workdir / "centre-keys")
        operator = Operator(broker.port)
        operator.start()
        stops.append(operator.stop)
        centre = Centre(broker, workdir / "centre", key_file, operator, ack_trace, live_trace)
        stops.append(centre.stop)
        centre.start()
        requester, responder = Requester(broker.port, workdir), Responder(broker.port, workdir)
        for c in (requester, responder):
            c.start()
            stops.append(c.stop)

        if args.presses:
            box = RunningBox(box_config(workdir / "box", broker.port, pub_file, False))
            stops.append(box.stop)
            box.start()
            run_acks(args, box, operator, ack_trace, requester, responder, res)
            res.alarm_bytes = len(ack_trace.alarm_payload)
            res.ack_bytes = len(ack_trace.ack_payload)
            stops.pop()
            box.stop()
        if args.live_seconds:
            centre.acks = False
            # The same box restarted with a camera: same storage, so the same box key (the
            # receiver pinned it) and the same replay cache.
            box = RunningBox(box_config(workdir / "box", broker.port, pub_file, True))
            stops.append(box.stop)
            box.start()
            direct = DirectPublisher(broker.port)
            direct.start()
            stops.append(direct.stop)
            run_live(args, box, centre, operator, live_trace, direct, responder, res)
        res.elapsed_s = time.monotonic() - started
        return res
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:  # cleanup must reach the broker whatever failed before
                print(f"cleanup: {stop!r} failed: {exc}", file=sys.stderr)


# --- report ------------------------------------------------------------------------------------

ACK_STAGES = {  # label -> (from mark, to mark)
    "box: press -> alarm committed (buttons thread, WAL fsync)": ("t0", "committed"),
    "box: committed -> alarm written to the socket (uplink thread)": ("committed", "alarm_out"),
    "alarm written -> the centre's receiver has it (broker hop)": ("alarm_out", "centre_rx"),
    "press -> alarm at the centre's receiver": ("t0", "centre_rx"),
    "centre: store the alarm (ledger commit, alarms.jsonl fsync)": ("centre_rx", "centre_stored"),
    "centre: sign the ack (Ed25519, JSON)": ("centre_stored", "ack_sent"),
    "ack published -> box's uplink thread has it": ("ack_sent", "box_rx"),
    "  of which the uplink thread was busy (PUBACK mark, receipt delete)": ("busy", ""),
    "box: parse, verify the signature, check": ("verify_in", "nonce_in"),
    "box: replay cache commit (WAL fsync)": ("nonce_in", "nonce_out"),
    "box: nonce -> indicator steady (handler, lock, LED on)": ("nonce_out", "ack_out"),
    "centre sends ack -> box applied it": ("ack_sent", "ack_out"),
    "total: press -> indicator acknowledged": ("t0", "ack_out"),
}


def ack_stages(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label, (a, b) in ACK_STAGES.items():
        if a == "busy":
            xs = [r["busy_s"] for r in rows if "busy_s" in r]
        else:
            xs = [r[b] - r[a] for r in rows if a in r and b in r]
        if xs:
            out[label] = describe(xs)
    return out


def ack_margin(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """How long before the ack reached the indicator (``acknowledged`` called) the buttons
    thread called ``Indicators.alarm`` for the alarm. Both then take the indicator's lock; an
    ack that gets it first is remembered by the indicator and applied when the alarm arrives
    (fixed after this bench found the race). The minimum is how close a run came to it."""
    xs = sorted(r["ack_in"] - r["to_indicator"] for r in rows
                if "ack_in" in r and "to_indicator" in r)
    if not xs:
        return None
    return {"n": len(xs), "min_ms": xs[0] * 1e3, "p1_ms": percentile(xs, 1) * 1e3,
            "p50_ms": percentile(xs, 50) * 1e3}


def live_stages(segs: list[LiveSeg]) -> dict[str, dict[str, float]]:
    done = [s for s in segs if s.written is not None and s.first_in is not None]
    spans: dict[str, list[float]] = {
        "capture -> first packet into the segmenter (encode)": [
            s.first_in_wall - s.start_wall for s in done if s.first_in_wall is not None],
        "first packet in -> closing keyframe in (the segment fills)": [
            s.close_in - s.first_in for s in done if s.first_in is not None],
        "closing keyframe -> live feed (mux, sha256, ring)": [s.emitted - s.close_in
                                                             for s in done],
        "live feed -> posted to the uplink (chunking)": [s.posted - s.emitted for s in done],
        "posted -> first chunk at the receiver": [s.rx_first - s.posted for s in done
                                                  if s.rx_first is not None],
        "first chunk -> segment appended (rest of the chunks)": [
            s.written - s.rx_first for s in done if s.written and s.rx_first is not None],
        "segment complete -> appended at the receiver (transport)": [
            s.written - s.close_in for s in done if s.written is not None],
        "bare paho: the same chunks -> last one at a subscriber": [
            s.bare_s for s in done if s.bare_s is not None],
        "total: first packet in -> appended at the receiver": [
            s.written - s.first_in for s in done if s.written and s.first_in is not None],
        "frame captured -> appended at the receiver (wall clock)": [
            s.written_wall - s.start_wall for s in done if s.written_wall is not None],
    }
    return {label: describe(xs) for label, xs in spans.items() if xs}


def report(res: Results, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, dict[str, float]] = {}
    if res.ack:
        figures["agent"] = describe([r["ack_out"] - r["t0"] for r in res.ack])
    if res.bare:
        figures["bare"] = describe(res.bare)
    if res.durable:
        figures["durable"] = describe(res.durable)
    ratios: dict[str, float] = {}
    a = figures.get("agent")
    for den in ("bare", "durable"):
        d = figures.get(den)
        if a and d:
            ratios[f"agent/{den} p50"] = a["p50_ms"] / d["p50_ms"]
            ratios[f"agent/{den} p99"] = a["p99_ms"] / d["p99_ms"]
    live = live_stages(res.live)
    total = live.get("total: first packet in -> appended at the receiver")
    transport = live.get("segment complete -> appended at the receiver (transport)")
    bare_live = live.get("bare paho: the same chunks -> last one at a subscriber")
    live_ratios: dict[str, float] = {}
    if transport and bare_live:
        live_ratios["transport/bare p50"] = transport["p50_ms"] / bare_live["p50_ms"]
        live_ratios["transport/bare p99"] = transport["p99_ms"] / bare_live["p99_ms"]
    sizes = [s.size for s in res.live]
    return {
        "bench": "roundtrip",
        "date": time.strftime("%Y-%m-%d"),
        "elapsed_s": round(res.elapsed_s, 1),
        "ack": {
            "presses": len(res.ack),
            "warmup": args.warmup,
            "not_shown": res.not_shown,
            "truncated": res.truncated,
            "elapsed_s": round(res.ack_elapsed_s, 1),
            "payload_bytes": {"request": res.alarm_bytes, "reply": res.ack_bytes},
            "target_p99_ms": TARGET_ACK_P99_MS,
            "target_met": bool(a and a["p99_ms"] < TARGET_ACK_P99_MS and not res.not_shown),
            "figures": figures,
            "ratios": ratios,
            "stages": ack_stages(res.ack),
            "margin": ack_margin(res.ack),
        },
        "live": {
            "seconds": args.live_seconds,
            "camera": {"id": CAMERA, **CAMERA_CFG},
            "segments": len(res.live),
            "written": sum(1 for s in res.live if s.written is not None),
            "dropped_by_uplink": res.live_dropped,
            "not_written": res.live_missing,
            "uplink_at_end": res.live_uplink,
            "file_matches_segments": res.live_file_ok,
            "segment_bytes": {"min": min(sizes), "max": max(sizes)} if sizes else None,
            "chunks_per_segment": max((s.chunks for s in res.live), default=0),
            "elapsed_s": round(res.live_elapsed_s, 1),
            "target_p99_ms": TARGET_LIVE_P99_MS,
            "target_met": bool(total and total["p99_ms"] < TARGET_LIVE_P99_MS),
            "stages": live,
            "ratios": live_ratios,
        } if args.live_seconds else None,
        "context": {**ctx, "loadavg_end": os.getloadavg()},
    }


def _row(label: str, f: dict[str, float], mean: bool = True) -> str:
    cells = f"| {label} | {f['p50_ms']:.3f} | {f['p99_ms']:.3f} | {f['max_ms']:.3f} |"
    return cells + (f" {f['mean_ms']:.3f} |" if mean else "")


def markdown(r: dict[str, Any]) -> str:
    c, ack, live = r["context"], r["ack"], r["live"]
    labels = {"agent": "agent (press -> indicator acknowledged)",
              "bare": "bare paho request/response",
              "durable": "bare paho request/response + the same 4 disk syncs"}
    lines: list[str] = []
    if ack["figures"]:
        lines += [
            f"Acknowledgement round trip, {ack['presses']} presses after {ack['warmup']} warm-up "
            f"({ack['elapsed_s']} s{', TRUNCATED by --budget-s' if ack['truncated'] else ''}); "
            f"request {ack['payload_bytes']['request']} B, reply "
            f"{ack['payload_bytes']['reply']} B, QoS 1 both ways",
            "",
            "| path | p50 ms | p99 ms | max ms | mean ms |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [_row(labels[k], f) for k, f in ack["figures"].items()]
        lines += ["", "| ratio | p50 | p99 |", "|---|---:|---:|"]
        for den in ("bare", "durable"):
            p50, p99 = ack["ratios"].get(f"agent/{den} p50"), ack["ratios"].get(f"agent/{den} p99")
            if p50 is not None and p99 is not None:
                lines.append(f"| agent / {labels[den]} | {p50:.2f}x | {p99:.2f}x |")
        lines += ["", "| stage | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|"]
        lines += [_row(k.replace("  ", "&nbsp;&nbsp;", 1) if k.startswith("  ") else k, f,
                       mean=False) for k, f in ack["stages"].items()]
        a = ack["figures"].get("agent")
        if a:
            verdict = "MET" if ack["target_met"] else "MISSED"
            lines += ["", f"Target: ack round trip p99 < {ack['target_p99_ms']:.0f} ms: {verdict} "
                          f"(p99 {a['p99_ms']:.2f} ms). Acks taken but not shown "
                          f"(another event on the indicator): {ack['not_shown']}."]
        m = ack["margin"]
        if m:
            lines += ["", "Margin: the buttons thread called Indicators.alarm "
                          f"{m['p50_ms']:.3f} ms (p50), {m['p1_ms']:.3f} ms (p1), "
                          f"{m['min_ms']:.3f} ms (min) before the ack reached the indicator; "
                          "an ack that comes first is remembered and applied when the alarm "
                          "arrives."]
    if live:
        b = live["segment_bytes"] or {"min": 0, "max": 0}
        lines += [
            "",
            f"Live view, {live['seconds']} s session of {live['camera']['id']} "
            f"({live['camera']['size']}, {live['camera']['fps']} fps, segment_s "
            f"{live['camera']['segment_s']}): {live['written']} of {live['segments']} segments "
            f"written ({b['min'] // 1024} to {b['max'] // 1024} KB, up to "
            f"{live['chunks_per_segment']} chunks), {live['dropped_by_uplink']} skipped by the "
            f"uplink; live file = the segments: {'yes' if live['file_matches_segments'] else 'NO'}",
            "",
            "| stage, per segment | p50 ms | p99 ms | max ms | mean ms |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [_row(k, f) for k, f in live["stages"].items()]
        if live["not_written"]:
            lines += ["", f"NOT written at the receiver: {'; '.join(live['not_written'])}. "
                          f"Box uplink at the end: {live['uplink_at_end']}."]
        lr = live["ratios"]
        if lr:
            lines += ["", f"Transport / bare paho: {lr['transport/bare p50']:.2f}x at p50, "
                          f"{lr['transport/bare p99']:.2f}x at p99."]
        total = live["stages"].get("total: first packet in -> appended at the receiver")
        if total:
            verdict = "MET" if live["target_met"] else "MISSED"
            lines += ["", f"Target: live latency p99 < {live['target_p99_ms']:.0f} ms with 1 s "
                          f"segments: {verdict} (p99 {total['p99_ms']:.0f} ms over "
                          f"{total['n']} segments; with so few, p99 is the maximum)."]
    la, lb = c["loadavg"], c["loadavg_end"]
    lines += [
        "",
        f"Machine: {c['cpus']} CPUs ({c['cpus_usable']} usable) {c['cpu_model']}; "
        f"Linux {c['kernel']}; Python {c['python']}; SQLite {c['sqlite']}; paho {c['paho']}; "
        f"{c['broker']}; PyAV {c['pyav']} (libavcodec {c['libavcodec']}). "
        f"Agent code: {c['agent_code']}.",
        f"Storage: {c['storage_dir']} on {c['storage_fs']} ({c['storage_device']} at "
        f"{c['storage_mount']}). Load average {la[0]:.2f} at start, {lb[0]:.2f} at end. "
        f"Whole run {r['elapsed_s']} s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--presses", type=int, default=500,
                    help="counted presses (default 500; 0 skips the ack round trip)")
    ap.add_argument("--warmup", type=int, default=20, help="presses not counted (default 20)")
    ap.add_argument("--live-seconds", type=int, default=30,
                    help="length of the live session (default 30; 0 skips it; at most 120)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ap.add_argument("--storage-dir", type=Path, default=None,
                    help="parent of the temporary work dir; must be a real disk, not tmpfs "
                         "(default: the temp dir, or /var/tmp if that is tmpfs)")
    ap.add_argument("--budget-s", type=float, default=100.0,
                    help="stop pressing after this long and report what was measured")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    args = ap.parse_args(argv)
    if args.presses < 0 or args.warmup < 0 or not 0 <= args.live_seconds <= 120:
        ap.error("--presses and --warmup must be >= 0, --live-seconds 0..120")
    if not args.presses and not args.live_seconds:
        ap.error("nothing to measure")
    if not args.presses:
        args.warmup = 0

    parent = args.storage_dir or default_storage_parent()
    workdir = Path(tempfile.mkdtemp(prefix="roundtrip-", dir=parent))
    ctx = machine_context(workdir)
    ctx["pyav"] = av.__version__
    ctx["libavcodec"] = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    if ctx["storage_fs"] in ("tmpfs", "ramfs"):
        print(f"warning: {workdir} is on {ctx['storage_fs']}: fsync costs nothing there and the "
              "figures understate a real disk", file=sys.stderr)
    try:
        with agent_logs_to(workdir / "agent.log"):
            res = run(args, workdir)
    except BenchError as exc:
        print(f"roundtrip: {exc} (work dir kept: {workdir})", file=sys.stderr)
        return 1
    if res.live_missing or res.not_shown:
        print(f"anomalies found: work dir kept for the logs: {workdir}", file=sys.stderr)
    elif not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    r = report(res, ctx, args)
    print(json.dumps(r, indent=2) if args.json else markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
