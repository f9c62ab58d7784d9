"""Acknowledgement round trip and live latency: the agent against bare paho in the same run.

    .venv/bin/python -m bench.roundtrip                  # 500 presses + 30 s of live view (~70 s)
    .venv/bin/python -m bench.roundtrip --presses 100 --live-seconds 10 --json
    .venv/bin/python -m bench.roundtrip --live-seconds 0 # the acknowledgement round trip only

A simulated site (agent/testing) in this process: its private Mosquitto, the real Daemon (mock
GPIO, storage on disk, an LED on mock GPIO 5, the centre's public key) and the centre's real
receiver (ledger and ``alarms.jsonl`` on disk). Timestamps come from the agent's tracing points
(agent/tracing.py) on both sides; no agent code is wrapped. Percentiles are nearest-rank.

1. Acknowledgement round trip, per press: t0 = perf_counter(); MockPin(17).drive_low() -> the
   box commits and publishes the alarm; the receiver stores it (ledger commit, alarms.jsonl
   fsync) and calls on_alarm, where the bench's operator signs an ``ack`` for it with the
   centre's key (as ``edge-agent central ack`` does) and publishes it on a connection it keeps
   open (no human in the loop) -> the box verifies it (Ed25519, replay cache commit) and turns
   the indicator steady: t1 = the ``applied`` point (the bench checks the LED reads 1).
   Baselines, interleaved press by press, with the press's own alarm and ack bytes on topics
   of the same length (outside ``schools/``, which the receiver would otherwise work on):

       bare      a client publishes the alarm bytes at QoS 1; a responder's on_message
                 publishes the ack bytes at QoS 1; t1 in the requester's on_message.
       durable   the same plus the agent's four disk syncs: a SQLite FULL commit before the
                 request (the outbox), a FULL commit and a fsynced line at the responder (the
                 ledger, alarms.jsonl), a FULL commit before t1 (the replay cache).

   Pacing as in bench/alarm_latency.py: one press in flight; then the pin is released, the
   outbox settles (alarm confirmed, command result delivered), the baselines run after 5 ms of
   quiet each, the board re-arms and the indicator is reset.

2. Live view, per 1 s segment: the same box restarted (same storage: the same box key) with one
   synthetic camera (320x180, 10 fps, 1 s segments) and a signed ``live`` command for
   ``--live-seconds``. t0 = the segment's first frame captured (its wall-clock start), t1 = the
   receiver appended it to the growing live file (``centre_live``). Baseline, at a random moment
   of the half second after each segment is written: a client with no loop thread publishes the
   same chunks back to back at QoS 1, t1 when the last reaches a subscriber. A segment can leave
   only once complete, about segment_s after its first frame: the floor of this figure.

Bounded: every wait times out (exit 1 naming the step); the presses stop after ``--budget-s``
and the live session after its length plus 15 s; everything started is stopped in any case.
Run from the repository root; the storage must be a real disk (the fsyncs are in the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import sqlite3
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import av

from agent.commands.keys import generate_keypair, load_private_key, sign_command
from agent.delivery.framing import live_chunks
from agent.delivery.protocol import Alarm, Topics
from agent.hardware.buttons import Timing
from agent.hardware.indicators import Pattern
from agent.testing import bench, stats, wait_for
from agent.testing.mqtt import MqttClient
from agent.testing.site import InProcessAgent, Site
from agent.tracing import Point

TARGET_ACK_P99_MS, TARGET_LIVE_P99_MS = 50.0, 1500.0
SITE, TOPICS = "sim-school", Topics("schools", "sim-school")
BARE, DURABLE = Topics("bschool", "bas-school"), Topics("bschool", "dur-school")
BUTTON, BUTTON_PIN, LED_PIN = "entrance", 17, 5
CAMERA_ID = "entrance-cam"
CAMERA: dict[str, Any] = {
    "id": CAMERA_ID,
    "source": "synthetic:entrance",
    "size": "320x180",
    "fps": 10,
    "segment_s": 1,
    "pre_alarm_s": 5,
    "post_alarm_s": 5,
}
WAIT_S = 5.0  # any single wait; a press that takes this long is a failure, not a sample
RELEASE_MARGIN_S, SETTLE_S = 0.010, 0.005  # as in bench/alarm_latency.py
LIVE_START_S, LIVE_MARGIN_S, LIVE_JITTER_S = 20.0, 15.0, 0.5
KEEPALIVE_S = 600  # the bench's clients never ping (see bench/alarm_latency.py)
# The live baseline's buffers: room for a whole segment, so its floor is the broker and the
# subscriber, not the kernel's autotuning (measured without: some runs' floor was 10-12 ms).
SNDBUF_BYTES = 1 << 20
LIVE_POINTS = {Point.LIVE_SEGMENT, Point.LIVE_POSTED, Point.CENTRE_CHUNK, Point.CENTRE_LIVE}
ACK_STAGES = {
    "box: press -> alarm committed (buttons thread, WAL fsync)": ("t0", Point.COMMITTED),
    "box: committed -> alarm written to the socket (uplink thread)": (
        Point.COMMITTED,
        Point.PUBLISHED,
    ),
    "alarm written -> the centre's receiver has it (broker hop)": (
        Point.PUBLISHED,
        Point.CENTRE_ALARM,
    ),
    "**press -> alarm at the centre's receiver**": ("t0", Point.CENTRE_ALARM),
    "centre: store the alarm (ledger commit, alarms.jsonl fsync)": (Point.CENTRE_ALARM, "stored"),
    "centre: sign the ack (Ed25519, JSON)": ("stored", "ack_sent"),
    "ack published -> box's uplink thread has it": ("ack_sent", Point.COMMAND),
    "box: verify, replay cache commit (WAL fsync), indicator steady": (
        Point.COMMAND,
        Point.APPLIED,
    ),
    "**centre sends ack -> box applied it**": ("ack_sent", Point.APPLIED),
    "total: press -> indicator acknowledged": ("t0", Point.APPLIED),
}


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


class Recorder:
    """The tracer of both phases: the acknowledgement's points go to a Stopwatch, a live
    segment's to its own row (by sha256, first crossing only); an appended one is queued."""

    def __init__(self) -> None:
        self.ack = stats.Stopwatch()
        self.live: dict[str, dict[str, float]] = {}
        self.written: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()  # guards live; held only to read or assign

    def __call__(self, point: Point, key: str) -> None:
        if point not in LIVE_POINTS:
            self.ack(point, key)
            return
        t = time.perf_counter()
        with self._lock:
            self.live.setdefault(key, {}).setdefault(point, t)
        if point is Point.CENTRE_LIVE:
            self.written.put(key)

    def row(self, sha: str) -> dict[str, float]:
        with self._lock:
            return dict(self.live.get(sha, {}))

    def posted(self) -> list[str]:
        with self._lock:
            return [sha for sha, r in self.live.items() if Point.LIVE_POSTED in r]


class Baselines:
    """Bare request/response over the broker, with and without the agent's four disk syncs, and
    the live chunks from a publisher without a loop thread (a loop thread would add a hand-off
    per chunk and fight the caller for the GIL: measured, a "floor" slower than the agent)."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.reply = b""
        self._t1 = 0.0
        self._outbox, self._nonces, self._ledger = (
            _full_db(workdir / f"bare-{n}.db") for n in ("outbox", "nonces", "ledger")
        )
        self._jsonl = open(workdir / "bare-alarms.jsonl", "ab")  # noqa: SIM115  # closed in close
        options: dict[str, Any] = {"keepalive": KEEPALIVE_S}
        self.requester = MqttClient(
            port,
            [BARE.cmd, DURABLE.cmd],
            client_id="bench-requester",
            on_message=self._reply_in,
            **options,
        )
        self.responder = MqttClient(
            port,
            [BARE.alarm, DURABLE.alarm, BARE.live(CAMERA_ID)],
            client_id="bench-responder",
            sndbuf=SNDBUF_BYTES,
            on_message=self._respond,
            **options,
        )
        self.direct = MqttClient(
            port, client_id="bench-live", threaded=False, sndbuf=SNDBUF_BYTES, **options
        )
        self.clients = [self.requester, self.responder, self.direct]

    def connect(self) -> None:
        for c in self.clients:
            c.connect()

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for db in (self._outbox, self._nonces, self._ledger):
            db.close()
        self._jsonl.close()

    def round_trip(self, durable: bool, payload: bytes) -> float:
        topics = DURABLE if durable else BARE
        since = self.requester.count()
        t0 = time.perf_counter()
        if durable:
            _commit(self._outbox, payload)
        mid = self.requester.send(topics.alarm, payload)
        self.requester.wait(topics.cmd, 1, WAIT_S, since)
        self.requester.wait_ack(mid)  # untimed: the request's PUBACK
        return self._t1 - t0

    def live(self, chunks: list[bytes]) -> float:
        topic = BARE.live(CAMERA_ID)
        since = self.responder.count()
        t0 = time.perf_counter()
        mids = [self.direct.send(topic, c) for c in chunks]
        self.direct.flush()
        last = self.responder.wait(topic, len(chunks), WAIT_S, since)[-1].at
        for mid in mids:  # untimed: the next send starts from a quiet connection
            self.direct.wait_ack(mid)
        return last - t0

    def _reply_in(self, m: Any) -> None:
        if m.topic == DURABLE.cmd:
            _commit(self._nonces, m.payload)
        self._t1 = time.perf_counter()

    def _respond(self, m: Any) -> None:
        if m.topic == BARE.live(CAMERA_ID):
            return
        if m.topic == DURABLE.alarm:
            _commit(self._ledger, m.payload)
            self._jsonl.write(m.payload + b"\n")
            self._jsonl.flush()
            os.fsync(self._jsonl.fileno())
        self.responder.send(BARE.cmd if m.topic == BARE.alarm else DURABLE.cmd, self.reply)


class Operator:
    """The centre's operator: acknowledges each alarm at once, from the receiver's on_alarm (on
    its alarms thread, once stored), on a connection of its own; collects the box's results."""

    def __init__(self, port: int, key: Path, rec: Recorder) -> None:
        self.client = MqttClient(
            port, [TOPICS.cmd_result], client_id="bench-operator", keepalive=KEEPALIVE_S
        )
        self._key, self._rec = load_private_key(key), rec
        self.acking = True
        self.command_id = ""
        self.alarm_bytes = self.ack_bytes = b""

    def on_alarm(self, record: dict[str, Any]) -> None:
        self._rec.ack.mark("stored")
        if not self.acking:
            return
        payload = self.send("ack", {"event_id": record["event_id"]})
        self._rec.ack.mark("ack_sent")
        if not self.alarm_bytes:  # the box's very bytes (the same encoder, the same fields)
            names = [f.name for f in fields(Alarm)]
            self.alarm_bytes = Alarm(**{k: record[k] for k in names}).to_json()
            self.ack_bytes = payload

    def send(self, name: str, args: dict[str, Any]) -> bytes:
        payload = sign_command(self._key, SITE, name, args)
        self.command_id = json.loads(payload)["id"]
        self.client.send(TOPICS.cmd, payload)
        return payload

    def result(self, command_id: str, what: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((r for r in self.client.payloads() if r.get("id") == command_id), None)

        self.client.until(lambda: found() is not None, WAIT_S, f"{what}: the box's result")
        doc = found()
        assert doc is not None and doc.get("ok"), f"{what}: the box refused: {doc}"
        return doc


def run_acks(
    args: argparse.Namespace,
    box: InProcessAgent,
    rec: Recorder,
    op: Operator,
    base: Baselines,
    res: dict[str, Any],
) -> None:
    daemon, pin, led = box.daemon, box.pins.pin(BUTTON_PIN), box.pins.pin(LED_PIN)
    board, outbox, indicators = daemon.buttons, daemon.outbox, daemon.indicators
    assert board is not None and outbox is not None and indicators is not None
    started = time.monotonic()
    for i in range(args.warmup + args.presses):
        if time.monotonic() > started + args.budget_s:
            res["truncated"] = True
            break
        counted = i >= args.warmup
        t0 = time.perf_counter()
        rec.ack.arm(t0)
        pin.drive_low()  # a finger on the button; the centre acknowledges; the LED goes steady
        if not rec.ack.wait(Point.APPLIED, WAIT_S):
            raise AssertionError(f"press {i}: the box applied no ack within {WAIT_S} s")
        pin.drive_high()
        released = time.perf_counter()
        row = rec.ack.take()
        result = op.result(op.command_id, f"press {i}")  # untimed from here
        if result["data"]["shown"]:
            if indicators.pattern is not Pattern.ACKNOWLEDGED or led.state != 1:
                raise AssertionError(
                    f"press {i}: acknowledged, but the indicator shows "
                    f"{indicators.pattern} and the LED reads {led.state}"
                )
            if counted:
                res["rows"].append(row)
        elif counted:
            res["not_shown"] += 1
        wait_for(
            lambda: not any(outbox.depth()[k] for k in ("alarm", "unconfirmed", "control")),
            WAIT_S,
            f"press {i}'s messages to settle",
            poll_s=0.0005,
        )
        base.reply = op.ack_bytes
        for name in ("bare", "durable"):
            time.sleep(SETTLE_S)
            took = base.round_trip(name == "durable", op.alarm_bytes)
            if counted:
                res[name].append(took)
        time.sleep(max(0.0, released + Timing().release_s + RELEASE_MARGIN_S - time.perf_counter()))
        wait_for(
            lambda: board.snapshot()[BUTTON]["state"] == "idle",
            WAIT_S,
            f"the button to re-arm after press {i}",
            poll_s=0.0005,
        )
        indicators.reset()
    res["ack_elapsed_s"] = round(time.monotonic() - started, 1)


def run_live(
    args: argparse.Namespace,
    box: InProcessAgent,
    rec: Recorder,
    op: Operator,
    base: Baselines,
    store: Path,
) -> dict[str, Any]:
    daemon = box.daemon
    assert daemon.video is not None and daemon.uplink is not None
    ring, feed = daemon.video.rings[CAMERA_ID], daemon.video.live[CAMERA_ID]
    wait_for(lambda: len(ring.segments()) >= 2, LIVE_START_S, "the camera's first segments")
    offset = time.time() - time.perf_counter()  # perf_counter -> wall clock, as Segment.start
    started, dropped = time.monotonic(), daemon.uplink.mailbox.live_dropped
    op.send("live", {"camera_id": CAMERA_ID, "seconds": args.live_seconds})
    session = op.result(op.command_id, "the live command")["data"]["session"]
    segs: dict[str, Any] = {}  # sha256 -> Segment, as written
    bare: dict[str, float] = {}
    deadline = started + args.live_seconds + LIVE_MARGIN_S
    while session in feed.sessions or any(
        Point.CENTRE_LIVE not in rec.row(s) for s in rec.posted()
    ):
        if time.monotonic() > deadline:
            break
        try:
            sha = rec.written.get(timeout=min(WAIT_S, max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            continue
        segs[sha] = next(s for s in ring.segments() if s.sha256 == sha)
        # In the quiet second before the next segment, at a random moment of it: at a fixed
        # delay it kept one phase against the agent's 1 Hz work for a whole run (measured:
        # some runs had a bare p50 of 4-12 ms, others 1.2 ms).
        time.sleep(SETTLE_S + random.uniform(0, LIVE_JITTER_S))
        bare[sha] = base.live(live_chunks(session, segs[sha], len(bare), False))
    posted = rec.posted()
    done = sorted(segs.values(), key=lambda s: s.index)
    rows = {s.sha256: rec.row(s.sha256) for s in done}
    wall = {sha: {p: t + offset for p, t in r.items()} for sha, r in rows.items()}
    path = store / SITE / "live" / session / f"{CAMERA_ID}.ts"
    spans: dict[str, list[float]] = {
        "first frame captured -> closing keyframe captured (the segment fills)": [
            s.duration for s in done
        ],
        "closing keyframe captured -> the daemon has it (encode, mux, sha256, ring)": [
            wall[s.sha256][Point.LIVE_SEGMENT] - s.end for s in done
        ],
        "the daemon -> posted to the uplink (chunking)": [
            r[Point.LIVE_POSTED] - r[Point.LIVE_SEGMENT] for r in rows.values()
        ],
        "posted -> first chunk at the receiver": [
            r[Point.CENTRE_CHUNK] - r[Point.LIVE_POSTED] for r in rows.values()
        ],
        "first chunk -> segment appended (the rest of the chunks)": [
            r[Point.CENTRE_LIVE] - r[Point.CENTRE_CHUNK] for r in rows.values()
        ],
        "**segment at the daemon -> appended at the receiver (transport)**": [
            r[Point.CENTRE_LIVE] - r[Point.LIVE_SEGMENT] for r in rows.values()
        ],
        "bare paho: the same chunks -> last one at a subscriber": list(bare.values()),
        "**total: first frame captured -> appended at the receiver**": [
            wall[s.sha256][Point.CENTRE_LIVE] - s.start for s in done
        ],
    }
    got = {label: stats.describe(xs) for label, xs in spans.items() if xs}
    sizes = [len(s.data) for s in done]
    return {
        "seconds": args.live_seconds,
        "camera": CAMERA,
        "posted": len(posted),
        "written": len(done),
        "not_written": len(set(posted) - set(segs)),
        "dropped_by_uplink": daemon.uplink.mailbox.live_dropped - dropped,
        "file_matches_segments": path.exists() and path.stat().st_size == sum(sizes),
        "segment_kb": [min(sizes) // 1024, max(sizes) // 1024] if sizes else None,
        "elapsed_s": round(time.monotonic() - started, 1),
        "stages": got,
        "transport/bare": stats.ratios(got[_T], got[_B]) if _T in got and _B in got else None,
        "target_met": bool(got.get(_TOTAL) and got[_TOTAL]["p99_ms"] < TARGET_LIVE_P99_MS),
    }


_T = "**segment at the daemon -> appended at the receiver (transport)**"
_B = "bare paho: the same chunks -> last one at a subscriber"
_TOTAL = "**total: first frame captured -> appended at the receiver**"


def _start_box(site: Site, **sections: Any) -> InProcessAgent:
    box = site.start_agent(**sections)
    assert isinstance(box, InProcessAgent) and box.daemon.uplink is not None
    uplink = box.daemon.uplink
    wait_for(lambda: uplink.centre_present, 10, "the box to see the centre")
    return box


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rec = Recorder()
    _key, pub = generate_keypair(workdir / "centre-keys")
    site = Site(
        workdir,
        agent=None,
        tracer=rec,
        on_alarm=lambda r: op.on_alarm(r),
        commands={"public_key_file": str(pub)},
        indicators={"led_pin": LED_PIN},
    )
    op = Operator(site.broker.port, _key, rec)
    base = Baselines(site.broker.port, workdir)
    res: dict[str, Any] = {
        "rows": [],
        "bare": [],
        "durable": [],
        "not_shown": 0,
        "truncated": False,
        "live": None,
    }
    started = time.monotonic()
    try:
        site.start()
        op.client.connect()
        base.connect()
        if args.presses:
            run_acks(args, _start_box(site), rec, op, base, res)
            site.stop_agent()
        if args.live_seconds:
            op.acking = False
            res["live"] = run_live(
                args, _start_box(site, cameras=[CAMERA]), rec, op, base, workdir / "centre"
            )
    finally:
        op.client.close()
        base.close()
        site.stop()
    res["elapsed_s"] = round(time.monotonic() - started, 1)
    res["payload_bytes"] = {"request": len(op.alarm_bytes), "reply": len(op.ack_bytes)}
    return res


def report(res: dict[str, Any], args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    rows = res.pop("rows")
    figures = {
        **stats.stages(rows, {"agent": ("t0", Point.APPLIED)}),
        **{k: stats.describe(res.pop(k)) for k in ("bare", "durable") if res[k]},
    }
    a = figures.get("agent")
    return {
        "bench": "roundtrip",
        "date": time.strftime("%Y-%m-%d"),
        **res,
        "ack": {
            "presses": len(rows),
            "warmup": args.warmup,
            "figures": figures,
            "ratios": {
                f"agent/{k}": stats.ratios(a, figures[k])
                for k in ("bare", "durable")
                if a and k in figures
            },
            "stages": stats.stages(rows, ACK_STAGES),
            "target_met": bool(a and a["p99_ms"] < TARGET_ACK_P99_MS and not res["not_shown"]),
        },
        "context": {**ctx, "pyav": av.__version__, "loadavg_end": os.getloadavg()},
    }


LABELS = {
    "agent": "agent (press -> indicator acknowledged)",
    "bare": "bare paho request/response",
    "durable": "bare paho request/response + the same 4 disk syncs",
}


def markdown(r: dict[str, Any]) -> str:
    ack, live, lines = r["ack"], r["live"], []
    if ack["figures"]:
        lines += [
            f"Acknowledgement round trip, {ack['presses']} presses after {ack['warmup']} "
            f"warm-up ({r.get('ack_elapsed_s')} s"
            f"{', TRUNCATED by --budget-s' if r['truncated'] else ''}); request "
            f"{r['payload_bytes']['request']} B, reply {r['payload_bytes']['reply']} B",
            "",
            *stats.table({LABELS[k]: f for k, f in ack["figures"].items()}),
            "",
            "| ratio | p50 | p99 |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| agent / {LABELS[k.split('/')[1]]} | {q['p50']:.2f}x | {q['p99']:.2f}x |"
            for k, q in ack["ratios"].items()
        ]
        lines += ["", *stats.table(ack["stages"], head="stage", mean=False)]
        if a := ack["figures"].get("agent"):
            lines += [
                "",
                f"Target: ack round trip p99 < {TARGET_ACK_P99_MS:.0f} ms: "
                f"{'MET' if ack['target_met'] else 'MISSED'} (p99 {a['p99_ms']:.2f} "
                f"ms). Acks taken but not shown: {r['not_shown']}.",
            ]
    if live:
        kb = live["segment_kb"] or [0, 0]
        lines += [
            "",
            f"Live view, {live['seconds']} s of {live['camera']['id']} "
            f"({live['camera']['size']}, {live['camera']['fps']} fps, segment_s "
            f"{live['camera']['segment_s']}): {live['written']} of {live['posted']} "
            f"posted segments written ({kb[0]} to {kb[1]} KB), "
            f"{live['dropped_by_uplink']} skipped by the uplink, "
            f"{live['not_written']} never written; live file = the segments: "
            f"{'yes' if live['file_matches_segments'] else 'NO'}",
            "",
            *stats.table(live["stages"], head="stage, per segment"),
        ]
        if q := live["transport/bare"]:
            lines += ["", f"Transport / bare paho: {q['p50']:.2f}x at p50, {q['p99']:.2f}x at p99."]
        if total := live["stages"].get(_TOTAL):
            lines += [
                "",
                f"Target: live latency p99 < {TARGET_LIVE_P99_MS:.0f} ms: "
                f"{'MET' if live['target_met'] else 'MISSED'} (p99 "
                f"{total['p99_ms']:.0f} ms; with so few segments, the maximum).",
            ]
    ctx = r["context"]
    lines += ["", f"{stats.machine_line(ctx)} PyAV {ctx['pyav']}. Whole run {r['elapsed_s']} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = bench.arguments(__doc__, budget_s=100.0)
    ap.add_argument("--presses", type=int, default=500, help="counted; 0: no ack round trip")
    ap.add_argument("--warmup", type=int, default=20, help="presses not counted")
    ap.add_argument("--live-seconds", type=int, default=30, help="0: no live view; at most 120")
    args = ap.parse_args(argv)
    if args.presses < 0 or args.warmup < 0 or not 0 <= args.live_seconds <= 120:
        ap.error("--presses and --warmup must be >= 0, --live-seconds 0..120")
    if not args.presses and not args.live_seconds:
        ap.error("nothing to measure")
    args.warmup = args.warmup if args.presses else 0

    def measure(workdir: Path) -> dict[str, Any]:
        ctx = stats.machine_context(workdir)
        return report(run(args, workdir), args, ctx)

    def anomalies(r: dict[str, Any]) -> bool:
        return bool(r["not_shown"] or (r["live"] and r["live"]["not_written"]))

    return bench.run("roundtrip", args, measure, markdown, agent_log=True, keep=anomalies)


if __name__ == "__main__":
    sys.exit(main())
