"""Uplink under load: alarms through a slow link while a 200 MB clip backlog drains.

    sudo .venv/bin/python -m bench.uplink            # every link, sender and TCP (~45 min)
    sudo .venv/bin/python -m bench.uplink --quick    # 3 links, 3 senders, reno only (~6 min)
    sudo .venv/bin/python -m bench.uplink --json     # the same figures, machine-readable

Needs root (network namespaces, veth, tc). Three private namespaces, as in a school
(agent/testing/netns.py: ``NetLab(router=True)``):

    box (the agent)  --veth--  rt (the modem: tbf)  --veth--  srv (Mosquitto, probe)
      10.213.K.1/30        10.213.K.2/30  10.213.K.5/30              10.213.K.6/30

The bottleneck and its buffer are in the router, not on the box's own interface: a school's
box has a fast NIC and the slow link is the modem's. Only addresses inside these namespaces
are ever used; none of them has a default route.

Links (every row of one run): tbf at 0.5, 1 and 4 Mbit/s, ``burst 4kb``, with the modem's
buffer modest (``latency 200ms``) or bloated like a 4G modem's (``latency 1000ms``); and a
step: 4 Mbit/s, down to 0.5 Mbit/s, back to 4 (buffer 1000 ms). The box's TCP is reno (the
loss-based stand-in for cubic, which a namespace may not pick here) and then bbr.

Senders, each with the same 200 MB backlog before it starts:

    self-tuning   the real Daemon, in this process, inside ``box``, with no configuration:
                  the pacer measures the path (agent/delivery/uplink/pacing.py). The backlog
                  is cut as this agent cuts clips on that link (about 90 ms of its rate).
    today         the same Daemon with ``uplink.auto_rate: false``: the fixed pacing of before
                  the pacer, no cap; 16 KB chunks, as it cuts them.
    today, cap    the same with ``uplink.max_kbps`` at 90 % of the link, the setting the
                  technician had to get right (for the step: 90 % of the 4 Mbit/s it starts at).
    fifo          a plain paho client (loop_start, QoS 1, defaults) that publishes the backlog,
                  then its alarms: everything in one FIFO, as a naive publisher does.

Every ~0.5 s a mock button is pressed (at least 50 presses a row, so p99 is not the maximum):
t0 before ``simulate()`` (which returns once the alarm is committed), t1 when the probe (a
subscriber inside ``srv``, on the broker's loopback) receives it. Goodput: clip bytes (chunk
data, not headers) reaching the probe per second, as a share of the link's rate. In the step
rows, "back under 300 ms" is the time from the drop to the first press after which every press
of the slow phase arrived within 300 ms. "Link restored -> alarm": the self-tuning agent on the
1 Mbit/s link, cut (``wan-down``: the router answers ICMP unreachable; ``blackhole``: silence),
a press during the cut, the first queued alarm at the probe after the restore.

Percentiles are nearest-rank. Bounded: every wait has a timeout; namespaces and the broker are
removed in ``finally``. No agent code is patched: the variants differ only in the agent's
config, as a technician would set it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import threading
import time
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.box.daemon import Daemon
from agent.clock import rfc3339
from agent.config import load_config
from agent.config.model import Config
from agent.delivery.framing import CHUNK_BYTES, clip_chunks
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Alarm, Topics
from agent.delivery.uplink.link import LinkState
from agent.delivery.uplink.pacing import Pacer
from agent.sdnotify import Notifier
from agent.testing import bench
from agent.testing.netns import MQTT_PORT, NetLab, enter_netns, run_in_netns
from agent.testing.site import KEEPALIVE_S, school_config
from agent.testing.stats import machine_context, percentile
from agent.video.clips import ClipSegment
from agent.video.store import SegmentRef

BACKLOG_BYTES = 200 * 1024 * 1024
SEGMENT_BYTES = 2 * 1024 * 1024  # a 2 s segment at 8 Mbit/s
PAYLOAD_SHARE = 1448 / 1514  # of a tbf's rate, what TCP delivers (Ethernet, IP, TCP headers)
TARGET_P99_MS = 150.0
TARGET_GOODPUT = 0.85
TARGET_RECOVERY_S = 5.0  # after the step down, alarms back under ...
RECOVERED_MS = 300.0  # ... this
TARGET_RESTORE_S = 1.5
SITE = "sim-school"
WAIT_S = 20.0
WARM_S = 5.0  # connect, and the pacer's first measurements, before the presses

log = logging.getLogger("bench")


class BenchError(RuntimeError):
    """The bench could not complete: says which step and what to check."""


@dataclass(frozen=True)
class Link:
    name: str
    kbit: int
    queue_ms: int
    steps: tuple[tuple[float, int], ...] = ()  # (seconds into the presses, new kbit)


@dataclass(frozen=True)
class Sender:
    name: str
    auto: bool = True
    cap_share: float | None = None  # max_kbps as a share of the link's starting rate
    fifo: bool = False


SENDERS = (
    Sender("self-tuning"),
    Sender("today", auto=False),
    Sender("today, cap 90 %", auto=False, cap_share=0.9),
    Sender("fifo", fifo=True),
)
LINKS = tuple(
    Link(f"{kbit / 1000:g} Mbit/s, {q} ms", kbit, q)
    for kbit in (500, 1000, 4000)
    for q in (200, 1000)
)
STEP = Link("4 -> 0.5 -> 4 Mbit/s, 1000 ms", 4000, 1000, ((10.0, 500), (30.0, 4000)))


# --- the network ------------------------------------------------------------------------------

CUTS = {"wan-down": "down", "blackhole": "blackhole"}  # the report's names for NetLab's cuts


def network(workdir: Path, cc: str) -> NetLab:
    """box -- rt (tbf) -- srv (agent/testing/netns.py), the box's TCP ``cc``."""
    lab = NetLab(workdir, router=True).up()
    # A namespace may only pick from the host's tcp_allowed_congestion_control.
    if not lab.sysctl(lab.box, "net.ipv4.tcp_congestion_control", cc):
        lab.close()
        raise BenchError(
            f"the box cannot use TCP {cc}: see /proc/sys/net/ipv4/tcp_allowed_congestion_control"
        )
    shape(lab, 1000, 200)
    return lab


def shape(lab: NetLab, kbit: int, queue_ms: int) -> None:
    """The school's upload: ``kbit`` from the school to the centre, the modem's buffer
    ``queue_ms`` deep at that rate."""
    lab.shape(f"{kbit}kbit", "4kb", f"{queue_ms}ms")


# --- the centre's side ------------------------------------------------------------------------


class Probe:
    """One subscriber on the broker's loopback inside ``srv``: first arrival of each alarm (by
    event_id) and a running total of clip data bytes, each with perf_counter() time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.alarms: dict[str, float] = {}  # event_id -> t1
        self.clip_t: list[float] = []
        self.clip_cum: list[int] = []
        self._total = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="uplink-bench-probe", protocol=mqtt.MQTTv5
        )

    def start(self) -> None:
        c = self.client
        c.on_connect = lambda cl, *_: cl.subscribe(
            [("schools/+/alarm", 1), ("schools/+/clip/+", 1)]
        )
        c.on_subscribe = lambda *_: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", self.port, keepalive=600)
        c.loop_start()
        if not self.subscribed.wait(WAIT_S):
            raise BenchError("the probe got no SUBACK")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        t1 = time.perf_counter()
        payload = bytes(msg.payload)
        with self.lock:
            if msg.topic.endswith("/alarm"):
                with contextlib.suppress(ValueError, KeyError):
                    self.alarms.setdefault(json.loads(payload)["event_id"], t1)
                return
            self._total += len(payload) - (payload.find(b"\n") + 1)
            self.clip_t.append(t1)
            self.clip_cum.append(self._total)

    def clip_bytes_between(self, t_a: float, t_b: float) -> int:
        with self.lock:

            def at(t: float) -> int:
                i = bisect_left(self.clip_t, t)
                return self.clip_cum[i - 1] if i > 0 else 0

            return at(t_b) - at(t_a)

    def arrival(self, event_id: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                t = self.alarms.get(event_id)
            if t is not None or time.monotonic() >= deadline:
                return t
            time.sleep(0.002)


# --- the backlog ------------------------------------------------------------------------------


def make_segment(path: Path) -> SegmentRef:
    """One 2 MB segment of incompressible bytes; the backlog is 100 clips of it (the uplink
    reads each chunk's byte range from the file at send time)."""
    data = os.urandom(SEGMENT_BYTES)
    path.write_bytes(data)
    now = time.time()
    return SegmentRef(path, hashlib.sha256(data).hexdigest(), len(data), now - 2, now, 0)


def backlog_rows(segment: SegmentRef, chunk: int) -> list[Any]:
    """200 MB of clip chunks, cut and framed exactly as the agent queues a clip (framing.py):
    one clip per segment, with a hash-chain link and a signature as real clips carry."""
    topics = Topics("schools", SITE)
    rows: list[Any] = []
    for i in range(BACKLOG_BYTES // SEGMENT_BYTES):
        cs = ClipSegment(
            str(uuid.UUID(int=i + 1)),
            "bench-cam",
            0,
            True,
            segment,
            prev="0" * 64,
            link=hashlib.sha256(b"%d" % i).hexdigest(),
        )
        rows += clip_chunks(topics, cs, chunk, sig="A" * 86 + "==")
    return rows


def agent_chunk(link: Link) -> int:
    """What the self-tuning agent cuts clips to on this link, once it has measured it."""
    pacer = Pacer()
    assert pacer.meter is not None
    pacer.meter.upload_bps = link.kbit * 125 * PAYLOAD_SHARE
    return pacer.chunk_bytes(CHUNK_BYTES)


# --- one row ----------------------------------------------------------------------------------


@dataclass
class Row:
    cc: str
    link: Link
    sender: Sender
    chunk: int
    presses: list[tuple[float, float | None]] = field(default_factory=list)  # (t0, latency)
    goodput: list[float] = field(default_factory=list)  # per phase of the link
    drops: int = 0
    pacing: dict[str, Any] = field(default_factory=dict)
    restores: list[dict[str, Any]] = field(default_factory=list)


def agent_config(workdir: Path, host: str, sender: Sender, kbit: int) -> Config:
    """The simulated school (agent/testing/site.py), no cameras, as the sender sets its uplink."""
    uplink: dict[str, Any] = {"auto_rate": sender.auto}
    if sender.cap_share:
        uplink["max_kbps"] = int(kbit * sender.cap_share)
    return load_config(
        school_config(
            workdir / "agent.yaml",
            port=MQTT_PORT,
            storage=workdir / "state",
            host=host,
            uplink=uplink,
        )
    )


class Presses:
    """Presses every ~0.5 s and applies the link's steps on time; the phases' windows."""

    def __init__(
        self, lab: NetLab, link: Link, rng: random.Random, count: int, gap_s: float
    ) -> None:
        self.lab, self.link, self.rng, self.count, self.gap_s = lab, link, rng, count, gap_s
        self.phases: list[tuple[float, float, int]] = []  # (t_start, t_end, kbit)
        self.t_steps: list[float] = []

    def run(self, press: Any) -> list[tuple[float, str]]:
        sent: list[tuple[float, str]] = []
        steps = list(self.link.steps)
        t_start = phase_start = time.perf_counter()
        kbit = self.link.kbit
        end = steps[-1][0] + 10.0 if steps else 0.0
        while len(sent) < self.count or time.perf_counter() - t_start < end:
            time.sleep(self.gap_s * self.rng.uniform(0.5, 1.5))
            now = time.perf_counter()
            if steps and now - t_start >= steps[0][0]:
                self.phases.append((phase_start, now, kbit))
                kbit = steps.pop(0)[1]
                shape(self.lab, kbit, self.link.queue_ms)
                phase_start = now
                self.t_steps.append(now)
            sent.append(press())
        self.phases.append((phase_start, time.perf_counter(), kbit))
        return sent


def measure(row: Row, lab: NetLab, probe: Probe, presses: Presses, press: Any) -> None:
    drops0 = lab.dropped()
    sent = presses.run(press)
    deadline = time.monotonic() + (WAIT_S if not row.sender.fifo else 3.0)
    for t0, eid in sent:
        t1 = probe.arrival(eid, max(0.0, deadline - time.monotonic()))
        row.presses.append((t0, None if t1 is None else t1 - t0))
    row.goodput = [
        probe.clip_bytes_between(a, b) / (b - a) / (kbit * 125) for a, b, kbit in presses.phases
    ]
    row.drops = lab.dropped() - drops0


def run_agent(
    row: Row,
    lab: NetLab,
    probe: Probe,
    workdir: Path,
    segment: SegmentRef,
    presses: Presses,
    cuts: list[tuple[str, float]],
) -> None:
    wd = workdir / f"agent-{time.monotonic_ns()}"
    wd.mkdir()
    box = Outbox.open(wd / "state" / "outbox.db")
    try:
        box.add_many(backlog_rows(segment, row.chunk))
    finally:
        box.close()
    cfg = agent_config(wd, lab.b_addr, row.sender, row.link.kbit)
    ids = [b.id for b in cfg.buttons if not b.hold_s]  # a press, not a hold, raises the alarm
    daemon = Daemon(cfg, notifier=Notifier(None))
    try:
        daemon.start()
        up, buttons = daemon.uplink, daemon.buttons
        assert up is not None and buttons is not None
        deadline = time.monotonic() + WAIT_S
        while up.state is not LinkState.ONLINE:
            if time.monotonic() > deadline:
                raise BenchError(f"the agent did not connect to {lab.b_addr}: {up.last_error}")
            time.sleep(0.05)
        time.sleep(WARM_S)
        turn = iter(range(1 << 30))

        def press() -> tuple[float, str]:
            bid = ids[next(turn) % len(ids)]
            t0 = time.perf_counter()
            events = [e for e in buttons.simulate(bid, True) if e]
            buttons.simulate(bid, False)
            if not events:
                raise BenchError(f"pressing {bid} raised no alarm")
            return t0, str(events[0]["event_id"])

        measure(row, lab, probe, presses, press)
        row.pacing = up.pacer.status()
        for kind, hold in cuts:
            row.restores.append(measure_restore(lab, probe, up, press, kind, hold))
    finally:
        daemon.stop()
        shutil.rmtree(wd, ignore_errors=True)


def measure_restore(
    lab: NetLab, probe: Probe, up: Any, press: Any, kind: str, hold_s: float
) -> dict[str, Any]:
    """Cut, press, (hold), restore: seconds from the restore to that alarm at the probe."""
    lab.cut(CUTS[kind])
    t_cut = time.perf_counter()
    time.sleep(0.3)
    _, eid = press()
    reconnecting = False
    while time.perf_counter() - t_cut < hold_s:
        reconnecting |= up.state is not LinkState.ONLINE
        time.sleep(0.05)
    lab.restore()
    t_up = time.perf_counter()
    t1 = probe.arrival(eid, WAIT_S)
    deadline = time.monotonic() + WAIT_S  # back to a full pipe before the next cut
    while up.state is not LinkState.ONLINE and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)
    return {
        "kind": kind,
        "cut_s": round(t_up - t_cut, 1),
        "agent_reconnected": reconnecting,
        "restore_to_alarm_s": round(t1 - t_up, 3) if t1 is not None else None,
    }


def run_fifo(row: Row, lab: NetLab, probe: Probe, segment: SegmentRef, presses: Presses) -> None:
    """The backlog, then the alarms, on one plain paho client."""
    connected = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fifo", protocol=mqtt.MQTTv5)
    c.on_connect = lambda *_: connected.set()
    c.connect(lab.b_addr, 1883, keepalive=60)
    c.loop_start()
    try:
        if not connected.wait(WAIT_S):
            raise BenchError(f"the fifo client could not connect to {lab.b_addr}")
        data = segment.path.read_bytes()
        for _prio, topic, _key, header, ref in backlog_rows(segment, row.chunk):
            c.publish(
                topic.replace(SITE, "bas-school"),
                header + data[ref.offset : ref.offset + ref.length],
                qos=1,
            )
        time.sleep(WARM_S)
        seq = iter(range(1, 1 << 30))

        def press() -> tuple[float, str]:
            eid = str(uuid.uuid4())
            payload = Alarm(
                event_id=eid,
                seq=next(seq),
                site_id="bas-school",
                button_id="b1",
                location="bench",
                kind="panic",
                pressed_at=rfc3339(time.time()),
                clock_synced=True,
            ).to_json()
            t0 = time.perf_counter()
            c.publish("schools/bas-school/alarm", payload, qos=1)
            return t0, eid

        measure(row, lab, probe, presses, press)
    finally:
        c.disconnect()
        c.loop_stop()


# --- figures ----------------------------------------------------------------------------------


def recovery_s(row: Row, t_drop: float, t_rise: float) -> float | None:
    """From the drop to the first press after which every press of the slow phase arrived
    within RECOVERED_MS; None if the last one did not."""
    slow = [(t0, lat) for t0, lat in row.presses if t_drop <= t0 < t_rise]
    for i, (t0, _) in enumerate(slow):
        if all(lat is not None and lat * 1e3 < RECOVERED_MS for _, lat in slow[i:]):
            return t0 - t_drop
    return None


def summarise(row: Row, t_steps: list[float]) -> dict[str, Any]:
    lat = sorted(x for _, x in row.presses if x is not None)
    out: dict[str, Any] = {
        "cc": row.cc,
        "link": row.link.name,
        "sender": row.sender.name,
        "chunk_kb": round(row.chunk / 1024, 1),
        "presses": len(row.presses),
        "arrived": len(lat),
        "goodput": [round(g, 3) for g in row.goodput],
        "tbf_drops": row.drops,
        "pacing": row.pacing,
        "restores": row.restores,
    }
    if lat:
        out.update(
            p50_ms=round(percentile(lat, 50) * 1e3, 1),
            p95_ms=round(percentile(lat, 95) * 1e3, 1),
            p99_ms=round(percentile(lat, 99) * 1e3, 1),
            max_ms=round(lat[-1] * 1e3, 1),
        )
    if len(t_steps) == 2:
        rec = recovery_s(row, *t_steps)
        out["recovered_s"] = None if rec is None else round(rec, 1)
        slow = [x for t0, x in row.presses if t_steps[0] <= t0 < t_steps[1] and x is not None]
        out["slow_max_ms"] = round(max(slow) * 1e3) if slow else None
    return out


def targets(rows: list[dict[str, Any]]) -> dict[str, str]:
    tuned = [r for r in rows if r["sender"] == "self-tuning"]

    def verdict(bad: list[str]) -> str:
        return "met" if not bad else "MISSED: " + "; ".join(bad)

    p99 = [
        f"{r['cc']} {r['link']} {r.get('p99_ms')} ms"
        for r in tuned
        if r["arrived"] < r["presses"]
        or ("recovered_s" not in r and r.get("p99_ms", math.inf) >= TARGET_P99_MS)
    ]
    good = [
        f"{r['cc']} {r['link']} {min(r['goodput']):.0%}"
        for r in tuned
        if min(r["goodput"]) < TARGET_GOODPUT
    ]
    step = [
        f"{r['cc']} {r.get('recovered_s') or 'never'} s"
        for r in tuned
        if "recovered_s" in r and (r["recovered_s"] is None or r["recovered_s"] > TARGET_RECOVERY_S)
    ]
    restore = [x["restore_to_alarm_s"] for r in tuned for x in r["restores"]]
    slow = [str(t) for t in restore if t is None or t > TARGET_RESTORE_S]
    return {
        "p99": verdict(p99),
        "goodput": verdict(good),
        "step": verdict(step),
        "restore": verdict(slow) if restore else "not measured",
    }


def markdown(rep: dict[str, Any]) -> str:
    c = rep["context"]
    lines = [
        f"Uplink under load, {c['date']}: 200 MB clip backlog, tbf in a router namespace; "
        f"{c['cpus']} x {c['cpu_model']}, Linux {c['kernel']}, {c['broker']}, paho {c['paho']}; "
        f"load average {rep['load'][0]:.2f} at the start, {rep['load'][1]:.2f} at the end; "
        f"{rep['elapsed_s'] / 60:.0f} min.",
        "",
        "| TCP | link, buffer | sender | chunk | alarms | p50 | p95 | p99 | max | goodput | "
        "drops | pacer: upload, lowat, window |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rep["rows"]:
        if r["arrived"]:
            lat = " | ".join(f"{r[k]:,.0f} ms" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
        else:
            lat = "— | — | — | —"
        p = r["pacing"]
        pacer = (
            f"{p['upload_kbps']} kbit/s, {p['notsent_lowat']} B, {p['window']}"
            if p.get("mode") == "auto"
            else f"fixed, {p['notsent_lowat']} B, {p['window']}"
            if p
            else ""
        )
        back = (
            "never in the slow phase"
            if r.get("recovered_s") is None
            else f"{r['recovered_s']} s after the drop"
        )
        slowest = "no alarm arrived" if r.get("slow_max_ms") is None else f"{r['slow_max_ms']} ms"
        step = (
            f"; back under {RECOVERED_MS:.0f} ms {back} (slow phase max {slowest})"
            if "recovered_s" in r
            else ""
        )
        good = " / ".join(f"{g * 100:.1f} %" for g in r["goodput"])
        lines.append(
            f"| {r['cc']} | {r['link']} | {r['sender']}{step} | {r['chunk_kb']:g} KB "
            f"| {r['arrived']}/{r['presses']} | {lat} | {good} | {r['tbf_drops']} | "
            f"{pacer} |"
        )
    restores = [x for r in rep["rows"] for x in r["restores"]]
    if restores:
        lines += [
            "",
            "| cut (self-tuning, reno, 1 Mbit/s, 200 ms) | length | agent "
            "reconnected | link restored -> alarm |",
            "|---|---|---|---|",
        ]
        for x in restores:
            t = x["restore_to_alarm_s"]
            lines.append(
                f"| {x['kind']} | {x['cut_s']} s | "
                f"{'yes' if x['agent_reconnected'] else 'no'} | "
                f"{f'{t:.2f} s' if t is not None else 'not within 20 s'} |"
            )
    t = rep["targets"]
    lines += [
        "",
        f"Targets for the self-tuning agent: p99 < {TARGET_P99_MS:.0f} ms (every "
        f"fixed link; every alarm arrived on the step): {t['p99']}; "
        f"goodput >= {TARGET_GOODPUT:.0%}: {t['goodput']}; back under "
        f"{RECOVERED_MS:.0f} ms within {TARGET_RECOVERY_S:.0f} s of the step down: "
        f"{t['step']}; alarm within {TARGET_RESTORE_S} s of the link returning: "
        f"{t['restore']}.",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = bench.arguments(__doc__)
    ap.add_argument("--step", action="store_true", help="the step link only")
    ap.add_argument("--quick", action="store_true", help="0.5, 1 Mbit/s, the step; no cap; reno")
    ap.add_argument("--cc", nargs="+", default=["reno", "bbr"], help="the box's TCP, one pass each")
    ap.add_argument("--presses", type=int, default=50, help="presses a row (at least)")
    ap.add_argument("--gap-s", type=float, default=0.5, help="mean time between presses")
    ap.add_argument("--no-cuts", action="store_true", help="skip the link-cut rows")
    ap.add_argument("--seed", type=int, default=1, help="press-timing jitter seed")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("uplink: needs root (ip netns, veth, tc)", file=sys.stderr)
        return 2
    errors = (AssertionError, BenchError, RuntimeError, OSError)
    return bench.run(
        "uplink", args, partial(every_pass, args), markdown, agent_log=True, errors=errors
    )


def every_pass(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every TCP, link and sender asked for, and the report."""
    links, senders, ccs = [*LINKS, STEP], list(SENDERS), args.cc
    if args.quick:
        links = [LINKS[0], LINKS[2], STEP]
        senders = [s for s in SENDERS if not s.cap_share]
        ccs = ccs[:1]
    if args.step:
        links = [STEP]
    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    started, load0 = time.monotonic(), os.getloadavg()[0]
    segment = make_segment(workdir / "segment.ts")
    for cc in ccs:
        rows += run_pass(cc, links, senders, workdir, segment, rng, args)
    context = {
        **machine_context(workdir),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "box_cc": ccs,
        "keepalive_s": KEEPALIVE_S,
    }
    return {
        "bench": "uplink",
        "elapsed_s": time.monotonic() - started,
        "load": (load0, os.getloadavg()[0]),
        "context": context,
        "rows": rows,
        "targets": targets(rows),
    }


def run_pass(
    cc: str,
    links: list[Link],
    senders: list[Sender],
    workdir: Path,
    segment: SegmentRef,
    rng: random.Random,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every link and sender on one network whose box uses TCP ``cc``."""
    lab = network(workdir, cc)
    probe: Probe | None = None
    out: list[dict[str, Any]] = []
    try:
        enter_netns(lab.box)  # this thread and every thread it starts: the agent's side
        probe = Probe(lab.broker.port)
        run_in_netns(lab.srv, probe.start)  # the probe's loop thread lives in srv
        for link in links:
            for sender in senders:
                shape(lab, link.kbit, link.queue_ms)
                chunk = agent_chunk(link) if sender.auto and not sender.fifo else CHUNK_BYTES
                row = Row(cc, link, sender, chunk)
                presses = Presses(
                    lab, link, rng, args.presses, args.gap_s / 2 if link.steps else args.gap_s
                )
                cuts = (
                    [("wan-down", 3.0), ("wan-down", 8.0), ("wan-down", 12.0), ("blackhole", 12.0)]
                    if not args.no_cuts
                    and cc == "reno"
                    and sender.auto
                    and not sender.fifo
                    and link == LINKS[2]
                    else []
                )
                if sender.fifo:
                    run_fifo(row, lab, probe, segment, presses)
                else:
                    run_agent(row, lab, probe, workdir, segment, presses, cuts)
                out.append(summarise(row, presses.t_steps))
                print(
                    f"uplink: {cc} {link.name} {sender.name}: "
                    f"{json.dumps({k: v for k, v in out[-1].items() if k != 'pacing'})}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if probe is not None:
            probe.stop()
        lab.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
