"""Uplink under load: alarms through a 1 Mbit/s link while a 200 MB clip backlog drains.

    sudo python3 bench/uplink.py              # the full run, markdown on stdout (~5 min)
    sudo python3 bench/uplink.py --json       # the same figures, machine-readable
    sudo python3 bench/uplink.py --quick      # 16 KB chunks only, short windows (~1.5 min)

Needs root (network namespaces, veth, tc). Three private namespaces, as in a school:

    box (the agent)  --veth--  rt (the modem: tbf 1 Mbit/s)  --veth--  srv (Mosquitto, probe)
      10.214.K.1/30        10.214.K.2/30  10.214.K.5/30              10.214.K.6/30

The bottleneck and its buffer are in the router, not on the box's own interface: a school's
box has a fast NIC and the slow link is the modem's. (A tbf on the sender's own interface is
kind to every sender alike: TCP Small Queues then keeps the qdisc nearly empty.) The box runs
TCP cubic (``--cc``), the Debian / Raspberry Pi OS default, whatever the host uses. Only
addresses inside these namespaces are ever used; none of them has a default route.

What is measured, each with the same 200 MB backlog pre-filled before the sender starts:

    agent      the real Daemon, in this process, inside ``box``; the outbox holds the backlog
               as clip chunk rows (chunk header + a byte range of a 200 MB spool file, as
               agent/clips.py queues them). Every ~2 s a mock button is pressed: t0 before
               ``simulate()`` (which returns once the alarm is committed), t1 when the probe
               (a subscriber inside ``srv``, on the broker's loopback) receives that alarm.
    fifo       a plain paho client (loop_start, QoS 1, defaults) publishes the whole backlog,
               then an alarm every ~2 s: everything in one FIFO, as a naive publisher does.
    two-conn   at the same time, alarms on a SECOND paho connection while the fifo client
               keeps the link full: the usual alternative to an in-connection priority.

Goodput: clip bytes (chunk data, not headers) that reached the probe per second over the
measuring window, as a share of the link's 125,000 bytes/s. "Link restored -> alarm": cut the
router's link to the broker (``wan-down``, the router answers ICMP unreachable) or drop every
packet in both directions (``blackhole``, silence), press during the cut, restore, and time
the first queued alarm at the probe. Cuts shorter than 2 x keepalive leave the TCP connection
alive (TCP's retransmission timer decides); longer ones make the agent reconnect.

Percentiles are nearest-rank over few samples (one press per ~2 s): with n < 100, p99 is the
maximum. Bounded: every wait has a timeout; namespaces and the broker are removed in
``finally``. No agent code is patched: the variants differ only in the agent's config
(``uplink.max_kbps``), as a technician would set it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import paho.mqtt  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

import agent.delivery.uplink.pacing as uplink_module  # noqa: E402
from agent import logs  # noqa: E402
from agent.box.daemon import Daemon  # noqa: E402
from agent.clock import rfc3339  # noqa: E402
from agent.config import default_config_text, load_config  # noqa: E402
from agent.delivery.outbox import BlobRef, Outbox  # noqa: E402
from agent.delivery.protocol import Alarm, ChunkHeader, Priority, encode_chunk  # noqa: E402
from agent.delivery.uplink.link import LinkState  # noqa: E402
from agent.sdnotify import Notifier  # noqa: E402
from tests.fault.conftest import BUTTONS, NsBroker, enter_netns, run_in_netns, sh  # noqa: E402

LINK_BYTES_S = 125_000  # 1 Mbit/s
BACKLOG_BYTES = 200 * 1024 * 1024
TARGET_P99_MS = 300.0
TARGET_GOODPUT = 0.85
TARGET_RESTORE_S = 1.5
KEEPALIVE_S = 5  # the agent's; the smallest the config allows (production default: 10)
SITE = "sim-school"
WAIT_S = 20.0

log = logging.getLogger("bench")


class BenchError(RuntimeError):
    """The bench could not complete: says which step and what to check."""


# --- the network ------------------------------------------------------------------------------


class Topology:
    """box -- rt (tbf) -- srv, three namespaces; see the module docstring."""

    def __init__(self, workdir: Path, queue_ms: int, cc: str) -> None:
        pid = os.getpid()
        self.box, self.rt, self.srv = (f"ubench-{pid}-{n}" for n in ("box", "rt", "srv"))
        k = pid % 250 + 1
        self.box_a, self.rt_a, self.rt_b, self.srv_b = (f"10.214.{k}.{i}" for i in (1, 2, 5, 6))
        tag = pid % 100000
        self.dev_box, self.dev_rt_a, self.dev_rt_b, self.dev_srv = (
            f"u{x}{tag}" for x in ("a", "r", "s", "t"))
        self.queue_ms, self.cc = queue_ms, cc
        self.host_cc = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
        self.broker = NsBroker(self.srv, workdir / "broker")

    def up(self) -> None:
        for ns in (self.box, self.rt, self.srv):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", self.dev_box, "netns", self.box, "type", "veth",
           "peer", "name", self.dev_rt_a, "netns", self.rt)
        sh("ip", "link", "add", self.dev_rt_b, "netns", self.rt, "type", "veth",
           "peer", "name", self.dev_srv, "netns", self.srv)
        for ns, dev, addr in ((self.box, self.dev_box, self.box_a),
                              (self.rt, self.dev_rt_a, self.rt_a),
                              (self.rt, self.dev_rt_b, self.rt_b),
                              (self.srv, self.dev_srv, self.srv_b)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        net = self.box_a.rsplit(".", 1)[0]
        sh("ip", "-n", self.box, "route", "add", f"{net}.4/30", "via", self.rt_a)
        sh("ip", "-n", self.srv, "route", "add", f"{net}.0/30", "via", self.rt_b)
        sh("ip", "netns", "exec", self.rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for cc in dict.fromkeys((self.cc, "reno")):
            # A namespace may only pick from the host's tcp_allowed_congestion_control; when
            # cubic is not in it, reno is the loss-based stand-in (both fill a FIFO buffer).
            if sh("ip", "netns", "exec", self.box, "sysctl", "-qw",
                  f"net.ipv4.tcp_congestion_control={cc}", check=False).returncode == 0:
                self.cc = cc
                break
        else:
            self.cc = f"host default ({self.host_cc})"
        self.shape()
        self.broker.start()

    def shape(self) -> None:
        """1 Mbit/s from the school to the centre, with the modem's buffer (--queue-ms)."""
        sh("ip", "netns", "exec", self.rt, "tc", "qdisc", "replace", "dev", self.dev_rt_b,
           "root", "tbf", "rate", "1mbit", "burst", "4kb", "latency", f"{self.queue_ms}ms")

    def down(self) -> None:
        self.broker.kill()
        for ns in (self.box, self.rt, self.srv):
            sh("ip", "netns", "del", ns, check=False)

    def cut(self, kind: str) -> None:
        if kind == "wan-down":  # the router's link to the centre drops; it says so (ICMP)
            sh("ip", "-n", self.rt, "link", "set", self.dev_rt_b, "down")
        elif kind == "blackhole":  # every packet vanishes both ways, nobody says anything
            for dev in (self.dev_rt_a, self.dev_rt_b):
                sh("ip", "netns", "exec", self.rt, "tc", "qdisc", "replace", "dev", dev,
                   "root", "pfifo", "limit", "0")
        else:
            raise ValueError(kind)

    def restore(self) -> None:
        sh("ip", "-n", self.rt, "link", "set", self.dev_rt_b, "up")
        sh("ip", "netns", "exec", self.rt, "tc", "qdisc", "del", "dev", self.dev_rt_a, "root",
           check=False)
        self.shape()

    def qdisc_stats(self) -> dict[str, int]:
        out = sh("ip", "netns", "exec", self.rt, "tc", "-s", "qdisc", "show", "dev",
                 self.dev_rt_b).stdout
        stats: dict[str, int] = {}
        words = out.replace(",", " ").replace("(", " ").replace(")", " ").split()
        for key in ("dropped", "overlimits"):
            if key in words:
                with_num = words[words.index(key) + 1]
                stats[key] = int(with_num) if with_num.isdigit() else 0
        if "Sent" in words:
            stats["sent_bytes"] = int(words[words.index("Sent") + 1])
        return stats


# --- the centre's side ------------------------------------------------------------------------


class Probe:
    """One subscriber on the broker's loopback inside ``srv``: first arrival of each alarm (by
    event_id) and a running total of clip data bytes, each with perf_counter() time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.alarms: dict[str, float] = {}  # event_id -> t1
        self.copies = 0
        self.clip_t: list[float] = []
        self.clip_cum: list[int] = []
        self._total = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="uplink-bench-probe",
                                  protocol=mqtt.MQTTv5)

    def start(self) -> None:
        c = self.client
        c.on_connect = lambda cl, *_: cl.subscribe([("schools/+/alarm", 1),
                                                    ("schools/+/clip/+", 1)])
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
                self.copies += 1
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

    def arrival(self, event_id: str) -> float | None:
        with self.lock:
            return self.alarms.get(event_id)


def wait_arrival(probe: Probe, event_id: str, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while True:
        t = probe.arrival(event_id)
        if t is not None or time.monotonic() >= deadline:
            return t
        time.sleep(0.002)


# --- figures ----------------------------------------------------------------------------------


def percentile(sorted_xs: list[float], p: float) -> float:
    return sorted_xs[max(0, math.ceil(p / 100 * len(sorted_xs)) - 1)]


def describe(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    return {"n": len(s), "p50_ms": round(percentile(s, 50) * 1e3, 1),
            "p99_ms": round(percentile(s, 99) * 1e3, 1), "max_ms": round(s[-1] * 1e3, 1)}


# --- the backlog ------------------------------------------------------------------------------


def make_spool(path: Path, size: int) -> None:
    """200 MB of incompressible bytes (a random 1 MiB block repeated: nothing compresses)."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


def header(i: int, chunk: int) -> bytes:
    now = rfc3339(time.time())
    h = ChunkHeader(event_id="bench-backlog", camera_id="bench-cam", segment=i, final=False,
                    chunk=0, chunks=1, sha256="0" * 64, size=chunk, start=now, end=now)
    return encode_chunk(h, b"")  # the JSON line and its "\n"; the bytes follow at send time


def prefill(db: Path, spool: Path, chunk: int, total: int) -> int:
    n = total // chunk
    box = Outbox.open(db)
    try:
        box.add_many((Priority.CLIP, f"schools/{SITE}/clip/bench-cam", f"backlog-{i}",
                      header(i, chunk), BlobRef(spool, i * chunk, chunk)) for i in range(n))
    finally:
        box.close()
    return n


# --- the agent --------------------------------------------------------------------------------


def agent_config(workdir: Path, host: str, max_kbps: int | None) -> Any:
    data = yaml.safe_load(default_config_text())
    data["mqtt"].update({"host": host, "port": 1883, "keepalive_s": KEEPALIVE_S,
                         "allow_plaintext": True})
    data["storage"]["path"] = str(workdir / "state")
    data["cameras"] = []
    data["buttons"] = BUTTONS
    if max_kbps:
        data["uplink"] = {"max_kbps": max_kbps}
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


@dataclass
class Run:
    name: str
    chunk: int
    latencies: list[float] = field(default_factory=list)
    lost: int = 0
    goodput: float = 0.0
    window_s: float = 0.0
    restores: list[dict[str, Any]] = field(default_factory=list)
    qdisc: dict[str, int] = field(default_factory=dict)
    note: str = ""


class Presser:
    """Presses the six bench buttons in turn, each re-armed (released > 50 ms) first."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.i = 0

    def press(self) -> tuple[float, str]:
        assert self.daemon.buttons is not None
        bid = str(BUTTONS[self.i % len(BUTTONS)]["id"])
        self.i += 1
        t0 = time.perf_counter()
        events = [e for e in self.daemon.buttons.simulate(bid, True) if e]
        self.daemon.buttons.simulate(bid, False)
        if not events:
            raise BenchError(f"pressing {bid} raised no alarm")
        return t0, str(events[0]["event_id"])


def run_agent(topo: Topology, probe: Probe, workdir: Path, spool: Path, chunk: int,
              window_s: float, rng: random.Random, *, max_kbps: int | None = None,
              restores: list[tuple[str, float]] | None = None, name: str = "") -> Run:
    run = Run(name or f"agent {chunk // 1024} KB", chunk)
    wd = workdir / f"agent-{chunk}-{max_kbps}"
    wd.mkdir()
    n = prefill(wd / "state" / "outbox.db", spool, chunk, BACKLOG_BYTES)
    cfg = agent_config(wd, topo.srv_b, max_kbps)
    daemon = Daemon(cfg, notifier=Notifier(None))
    try:
        daemon.start()
        up = daemon.uplink
        assert up is not None
        deadline = time.monotonic() + WAIT_S
        while up.state is not LinkState.ONLINE:
            if time.monotonic() > deadline:
                raise BenchError(f"the agent did not connect to {topo.srv_b}: {up.last_error}")
            time.sleep(0.05)
        time.sleep(3.0)  # TCP out of slow start, the window full
        presser = Presser(daemon)
        stats0 = topo.qdisc_stats()
        t_start = time.perf_counter()
        pending: list[tuple[float, str]] = []
        while time.perf_counter() - t_start < window_s:
            time.sleep(max(0.0, 2.0 + rng.uniform(-0.4, 0.4)))
            pending.append(presser.press())
        t_end = time.perf_counter()
        deadline = time.monotonic() + WAIT_S
        for t0, eid in pending:
            t1 = wait_arrival(probe, eid, max(0.0, deadline - time.monotonic()))
            if t1 is None:
                run.lost += 1
            else:
                run.latencies.append(t1 - t0)
        run.window_s = t_end - t_start
        run.goodput = probe.clip_bytes_between(t_start, t_end) / run.window_s / LINK_BYTES_S
        stats1 = topo.qdisc_stats()
        run.qdisc = {k: stats1.get(k, 0) - stats0.get(k, 0) for k in stats1}
        run.note = f"{n} chunks queued"
        for kind, hold in restores or []:
            run.restores.append(measure_restore(topo, probe, daemon, presser, kind, hold))
    finally:
        daemon.stop()
        shutil.rmtree(wd, ignore_errors=True)
    return run


def measure_restore(topo: Topology, probe: Probe, daemon: Daemon, presser: Presser,
                    kind: str, hold_s: float) -> dict[str, Any]:
    """Cut, press, (hold), restore: seconds from the restore to that alarm at the probe."""
    up = daemon.uplink
    assert up is not None
    topo.cut(kind)
    t_cut = time.perf_counter()
    time.sleep(0.3)
    _, eid = presser.press()
    reconnecting = False
    while time.perf_counter() - t_cut < hold_s:
        reconnecting |= up.state is not LinkState.ONLINE
        time.sleep(0.05)
    topo.restore()
    t_up = time.perf_counter()
    t1 = wait_arrival(probe, eid, WAIT_S)
    # back to a full pipe before the next cut
    deadline = time.monotonic() + WAIT_S
    while up.state is not LinkState.ONLINE and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)
    return {"kind": kind, "cut_s": round(t_up - t_cut, 1),
            "agent_reconnected": reconnecting,
            "restore_to_alarm_s": round(t1 - t_up, 3) if t1 is not None else None}


# --- the baselines ----------------------------------------------------------------------------


def run_baselines(topo: Topology, probe: Probe, chunk: int, window_s: float,
                  rng: random.Random) -> tuple[Run, Run]:
    """One run, two baselines: the fifo client carries the backlog and its own alarms; a second
    connection carries other alarms. Both through the same shaped link."""
    fifo, two = Run("fifo (one paho client)", chunk), Run("two connections", chunk)
    data = os.urandom(chunk)
    host = topo.srv_b
    clients: list[mqtt.Client] = []
    connected = [threading.Event(), threading.Event()]
    for i, cid in enumerate(("bench-fifo", "bench-alarm-conn")):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.on_connect = lambda *_a, ev=connected[i]: ev.set()
        c.connect(host, 1883, keepalive=60)
        c.loop_start()
        clients.append(c)
    bulk, alarm_conn = clients
    try:
        for ev in connected:
            if not ev.wait(WAIT_S):
                raise BenchError(f"a baseline client could not connect to {host}")
        n = BACKLOG_BYTES // chunk
        for i in range(n):
            bulk.publish("schools/bas-school/clip/bench-cam", header(i, chunk) + data, qos=1)
        time.sleep(3.0)
        stats0 = topo.qdisc_stats()
        t_start = time.perf_counter()
        sent: list[tuple[str, float, str]] = []  # which, t0, event_id
        k = 0
        while time.perf_counter() - t_start < window_s:
            time.sleep(max(0.0, 1.0 + rng.uniform(-0.2, 0.2)))
            which = "fifo" if k % 2 == 0 else "two"
            k += 1
            eid = str(uuid.uuid4())
            payload = Alarm(event_id=eid, seq=k, site_id="bas-school", button_id="b1",
                            location="bench", kind="panic", pressed_at=rfc3339(time.time()),
                            clock_synced=True).to_json()
            t0 = time.perf_counter()
            (bulk if which == "fifo" else alarm_conn).publish(
                f"schools/{'bas' if which == 'fifo' else 'two'}-school/alarm", payload, qos=1)
            sent.append((which, t0, eid))
        t_end = time.perf_counter()
        deadline = time.monotonic() + 5.0  # the fifo's alarms would need many minutes
        for which, t0, eid in sent:
            run = fifo if which == "fifo" else two
            t1 = wait_arrival(probe, eid, max(0.0, deadline - time.monotonic()))
            if t1 is None:
                run.lost += 1  # not arrived: queued behind the backlog
            else:
                run.latencies.append(t1 - t0)
        stats1 = topo.qdisc_stats()
        for run in (fifo, two):
            run.window_s = t_end - t_start
            run.goodput = probe.clip_bytes_between(t_start, t_end) / run.window_s / LINK_BYTES_S
            run.qdisc = {key: stats1.get(key, 0) - stats0.get(key, 0) for key in stats1}
        ahead = BACKLOG_BYTES / max(fifo.goodput * LINK_BYTES_S, 1)
        fifo.note = (f"{fifo.lost} of {fifo.lost + len(fifo.latencies)} alarms not delivered "
                     f"in the window: each waits behind the whole backlog, "
                     f"~{ahead / 60:.0f} min at this goodput")
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
    return fifo, two


# --- report -----------------------------------------------------------------------------------


def machine_context(workdir: Path, topo: Topology) -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("model name", "Model")):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        mosq = subprocess.run([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
                              capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        mosq = "unknown"
    return {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "cpu_model": cpu,
            "kernel": platform.release(), "python": platform.python_version(),
            "paho": paho.mqtt.__version__, "broker": mosq,
            "sqlite": sqlite3.sqlite_version, "loadavg": os.getloadavg(),
            "box_cc": topo.cc, "host_cc": topo.host_cc,
            "link": f"tbf rate 1mbit burst 4kb latency {topo.queue_ms}ms, in the router",
            "notsent_lowat": uplink_module.NOTSENT_LOWAT_BYTES, "window": 8,
            "keepalive_s": KEEPALIVE_S, "workdir": str(workdir)}


def summarise(r: Run) -> dict[str, Any]:
    d = describe(r.latencies)
    return {"name": r.name, "chunk_kb": r.chunk // 1024, **d, "not_arrived": r.lost,
            "goodput": round(r.goodput, 3), "window_s": round(r.window_s, 1),
            "qdisc": r.qdisc, "restores": r.restores, "note": r.note}


def markdown(rep: dict[str, Any]) -> str:
    c = rep["context"]
    lines = [
        f"Uplink under load, {c['date']}: 1 Mbit/s link (tbf in a router namespace, "
        f"{c['link'].split('latency ')[1]}), 200 MB clip backlog, box TCP {c['box_cc']}; "
        f"{c['cpus']} x {c['cpu_model']}, Linux {c['kernel']}, {c['broker']}, "
        f"paho {c['paho']}",
        "",
        "| sender | chunk | alarms | alarm p50 | alarm p99 | max | goodput | tbf drops |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["runs"]:
        if r.get("n"):
            lat = f"{r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['max_ms']:.0f} ms"
        else:
            lat = "— | — | —"
        arrived = f"{r.get('n', 0)}/{r.get('n', 0) + r['not_arrived']}"
        lines.append(f"| {r['name']} | {r['chunk_kb']} KB | {arrived} | {lat} | "
                     f"{r['goodput'] * 100:.1f} % | {r['qdisc'].get('dropped', 0)} |")
    for r in rep["runs"]:
        if r["note"] and "not delivered" in r["note"]:
            lines += ["", f"{r['name']}: {r['note']}"]
    restores = [x for r in rep["runs"] for x in r["restores"]]
    if restores:
        lines += ["", "| cut | length | agent reconnected | link restored -> alarm |",
                  "|---|---|---|---|"]
        for x in restores:
            t = x["restore_to_alarm_s"]
            again = "yes" if x["agent_reconnected"] else "no"
            lines.append(f"| {x['kind']} | {x['cut_s']} s | {again} | "
                         f"{f'{t:.2f} s' if t is not None else 'not within 20 s'} |")
    t = rep["targets"]
    lines += ["", f"Targets: agent p99 < {TARGET_P99_MS:.0f} ms: {t['p99']}; goodput >= "
              f"{TARGET_GOODPUT:.0%}: {t['goodput']}; alarm within {TARGET_RESTORE_S} s of "
              f"the link returning: {t['restore']}. Elapsed {rep['elapsed_s']:.0f} s."]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ap.add_argument("--quick", action="store_true", help="16 KB chunks only, short windows")
    ap.add_argument("--window-s", type=float, default=50.0,
                    help="the headline (16 KB) measuring window (default 50)")
    ap.add_argument("--sweep-window-s", type=float, default=20.0,
                    help="the window of each other variant (default 20)")
    ap.add_argument("--queue-ms", type=int, default=200,
                    help="the router's buffer, as tbf latency (default 200 ms)")
    ap.add_argument("--cc", default="cubic", help="TCP congestion control in the box")
    ap.add_argument("--seed", type=int, default=1, help="press-timing jitter seed")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("uplink: needs root (ip netns, veth, tc)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="uplink-bench-", dir="/var/tmp"))
    logs.setup("info")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    agent_log = open(workdir / "agent.log", "a", encoding="utf-8")  # noqa: SIM115
    handler.setStream(agent_log)
    topo = Topology(workdir, args.queue_ms, args.cc)
    rng = random.Random(args.seed)
    runs: list[Run] = []
    started = time.monotonic()
    probe: Probe | None = None
    try:
        topo.up()
        enter_netns(topo.box)  # this thread and every thread it starts: the agent's side
        probe = Probe(topo.broker.port)
        run_in_netns(topo.srv, probe.start)  # the probe's loop thread lives in srv
        spool = workdir / "spool.bin"
        make_spool(spool, BACKLOG_BYTES)
        plan: list[tuple[int, float, dict[str, Any]]]
        capped = {"max_kbps": 900, "name": "agent 16 KB, max_kbps 900 (90% of the link)"}
        if args.quick:
            plan = [(16 * 1024, args.window_s / 2, {}), (16 * 1024, args.window_s / 2, capped)]
            restore_plan = [("wan-down", 12.0), ("blackhole", 12.0)]
        else:
            sweep = args.sweep_window_s
            plan = [(16 * 1024, args.window_s, {}),
                    *((kb * 1024, sweep, {}) for kb in (8, 32, 64)),
                    (16 * 1024, args.window_s, capped)]
            restore_plan = [("wan-down", 3.0), ("wan-down", 8.0), ("wan-down", 12.0),
                            ("blackhole", 12.0)]
        for i, (chunk, window, extra) in enumerate(plan):
            runs.append(run_agent(topo, probe, workdir, spool, chunk, window, rng,
                                  restores=restore_plan if i == 0 else None, **extra))
            print(f"uplink: {runs[-1].name}: {describe(runs[-1].latencies)} "
                  f"goodput {runs[-1].goodput:.3f}", file=sys.stderr, flush=True)
        fifo, two = run_baselines(topo, probe, 16 * 1024,
                                  args.sweep_window_s if not args.quick else 10.0, rng)
        runs += [fifo, two]
    except (BenchError, RuntimeError, OSError) as exc:
        print(f"uplink: {exc} (work dir kept: {workdir})", file=sys.stderr)
        return 1
    finally:
        if probe is not None:
            probe.stop()
        topo.down()
        handler.setStream(sys.stderr)
        agent_log.close()
    agent_runs = [r for r in runs if r.name.startswith("agent")]
    head = agent_runs[0]
    restores = [x["restore_to_alarm_s"] for x in head.restores]
    rep = {
        "bench": "uplink", "elapsed_s": time.monotonic() - started,
        "context": machine_context(workdir, topo),
        "runs": [summarise(r) for r in runs],
        "targets": {
            "p99": "met" if head.latencies and percentile(sorted(head.latencies), 99) * 1e3
            < TARGET_P99_MS and not head.lost else "MISSED",
            "goodput": "met" if head.goodput >= TARGET_GOODPUT else "MISSED",
            "restore": "met" if restores and all(t is not None and t <= TARGET_RESTORE_S
                                                 for t in restores) else "MISSED",
        },
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(rep, indent=2) if args.json else markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
