"""Fault injection: the pieces every fault test shares.

Each fault test drives the agent as a process (the way systemd runs it), injects one kind of
failure, and prints one line that a person or CI can grep:

    FAULT <name>: sent=N received=N lost=N duplicated=N [extra=...]

- sent: alarms the agent acknowledged as committed (the events a `simulate press` returned:
  the same reply `edge-agent simulate` prints; we call the control socket directly to save a
  Python start-up per press).
- received: distinct event_ids the centre stored (the real receiver, agent/central.py, which
  confirms each alarm with a receipt; arrival order is its order of first arrival).
- lost: acknowledged alarms that never arrived. Every fault test asserts lost == 0.
- duplicated: copies beyond the first seen by the raw collector, a second subscriber that
  records every copy with its arrival time (at-least-once: duplicates are allowed).

What is here:
- :class:`Tally`: the bookkeeping and the FAULT line (also repeated in the terminal summary).
- :class:`Presser`: presses buttons through the control socket, re-arming each button first.
- :class:`Centre`: the real receiver plus the raw collector, optionally inside a namespace.
- tests/fault/mqtt_proxy.py: a proxy that cuts the box's link right after its k-th MQTT packet.
- :class:`NetLab` (fixture ``netlab``): two network namespaces joined by a veth pair, the broker
  in one, the agent in the other; cut, restore and shape the link. Nothing is added to the
  root namespace (no address, no route), so no test traffic can ever leave through the host's
  default route, whatever state a cut leaves the link in.
- :class:`FaultAgent`: ``tests.conftest.AgentProcess`` that can run in a namespace and with
  extra environment (libfaketime).
- fixtures ``tmpfs`` and ``ext4_loop`` for the storage faults; everything is torn down in
  finalizers even when a test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.box import control
from agent.centre.service import run_receiver
from agent.errors import AgentError
from agent.testing.broker import _die_with_parent
from tests.conftest import REPO, AgentProcess, wait_for, write_config

# Six normally-open buttons without hold_s: a press is an alarm on the first edge, and a tight
# loop can rotate through them while each one re-arms (release_s = 50 ms, agent/buttons.py).
BUTTONS = [
    {"id": f"b{i}", "pin": pin, "location": f"Fault-test room {i}", "wiring": "normally_open"}
    for i, pin in enumerate((5, 6, 12, 13, 16, 26), start=1)
]
REARM_S = 0.06  # release_s (50 ms) plus a margin
KEEPALIVE_S = 5  # the smallest the config allows; a dead link is noticed within 2 x this
MQTT_PORT = 1883  # inside a private namespace the port is always free

_FAULT_LINES: list[str] = []


# --- reporting ----------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FAULT_LINES:
        terminalreporter.section("fault injection")
        for line in _FAULT_LINES:
            terminalreporter.write_line(line)


def record_fault_line(line: str) -> None:
    """One grep-able result line, printed now and repeated in the terminal summary."""
    print(f"\n{line}", flush=True)
    _FAULT_LINES.append(line)


@dataclass
class Tally:
    """What the agent acknowledged and what the centre got; prints the FAULT line."""

    name: str
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> event, in order
    unacked_presses: int = 0  # presses whose reply never came (the agent died meanwhile)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            for e in events:
                self.acked[e["event_id"]] = e

    @property
    def sent(self) -> int:
        return len(self.acked)

    def missing(self, centre: Centre) -> list[str]:
        got = centre.received_ids()
        with self.lock:
            return [eid for eid in self.acked if eid not in got]

    def wait_delivered(self, centre: Centre, timeout: float) -> None:
        """Until every acknowledged alarm is at the centre (or time out; the report says)."""
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self.missing(centre), timeout, "every alarm at the centre")

    def report(self, centre: Centre, **extra: Any) -> dict[str, Any]:
        stored = centre.alarms()  # first arrivals, in arrival order
        raw = centre.raw_alarms()
        received = centre.received_ids()
        lost = self.missing(centre)
        duplicated = len(raw) - len({a["event_id"] for a in raw})
        seqs = sorted(a["seq"] for a in stored)
        gaps = sorted(set(range(1, seqs[-1] + 1)) - set(seqs)) if seqs else []
        late, top = 0, 0
        for a in stored:
            late += a["seq"] < top
            top = max(top, a["seq"])
        acked_seqs = [e["seq"] for e in self.acked.values()]
        info = {
            "sent": self.sent, "received": len(received), "lost": len(lost),
            "duplicated": duplicated, "seq_gaps": len(gaps), "out_of_order": late,
            "acked_seq_increasing": all(a < b for a, b in itertools.pairwise(acked_seqs)),
            "unacked_arrived": len(received - set(self.acked)),
            "lost_ids": lost,
        }
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        line = (f"FAULT {self.name}: sent={self.sent} received={len(received)} "
                f"lost={len(lost)} duplicated={duplicated}"
                f" seq_gaps={len(gaps)} out_of_order={late}" + (f" {tail}" if tail else ""))
        record_fault_line(line)
        return info

    def assert_ok(self, info: dict[str, Any], *, in_order: bool = True,
                  no_gaps: bool = True, seq_increasing: bool = True) -> None:
        assert info["lost"] == 0, f"{self.name}: lost {info['lost_ids']}"
        if seq_increasing:
            assert info["acked_seq_increasing"], f"{self.name}: seq not increasing in press order"
        if no_gaps:
            assert info["seq_gaps"] == 0, f"{self.name}: a gap in seq means a lost alarm"
        if in_order:
            assert info["out_of_order"] == 0, f"{self.name}: alarms arrived out of seq order"


# --- seeds: a randomized fault test proves little on one seed ---------------------------------
#
# A test that takes a ``seed`` argument runs once per seed: every seed that ever failed it (a
# regression case, kept forever, by test name below) plus ``--fault-seeds`` fresh ones (default
# 2) drawn anew on every run. FAULT_SEED=N runs exactly seed N instead. A failure prints the
# line that reproduces it.

REGRESSION_SEEDS: dict[str, tuple[int, ...]] = {
    # issue 9: a reset between paho closing its socket and select() killed the uplink thread
    "test_broker_killed_while_a_clip_backlog_drains": (1989770312,),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" not in metafunc.fixturenames:
        return
    env = os.environ.get("FAULT_SEED")
    if env:
        seeds = [int(env)]
    else:
        fresh = random.SystemRandom()
        seeds = [*REGRESSION_SEEDS.get(metafunc.function.__name__, ()),
                 *(fresh.randrange(1, 2**31)
                   for _ in range(metafunc.config.getoption("--fault-seeds")))]
    metafunc.parametrize("seed", seeds, ids=[f"seed={s}" for s in seeds])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    seed = getattr(item, "callspec", None) and item.callspec.params.get("seed")
    if seed is not None and report.failed and report.when == "call":
        test = item.nodeid.split("[")[0]
        line = f"reproduce: FAULT_SEED={seed} .venv/bin/pytest '{test}'"
        report.sections.append(("fault seed", line))
        _FAULT_LINES.append(f"FAILED {item.nodeid}: {line}")
    return report


def fault_seed(name: str, seed: int) -> int:
    """Print the seed beside the test's FAULT line, so a log shows which seed ran."""
    print(f"\n{name}: seed={seed} (reproduce with FAULT_SEED={seed})", flush=True)
    return seed


# --- the agent ------------------------------------------------------------------------------------


def fault_config(path: Path, storage: Path, host: str = "127.0.0.1", port: int = MQTT_PORT,
                 **sections: Any) -> Path:
    """The simulated school with six plain buttons, pointed at ``host:port``."""
    write_config(path, port, storage)
    data = yaml.safe_load(path.read_text())
    data["mqtt"].update({"host": host, "port": port, "keepalive_s": KEEPALIVE_S})
    if not host.startswith("127."):
        data["mqtt"]["allow_plaintext"] = True  # a private test namespace, not the internet
    data["buttons"] = BUTTONS
    data.update(sections)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class FaultAgent(AgentProcess):
    """The agent as a process, optionally inside a network namespace and with extra env."""

    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, ready_timeout: float = 15.0) -> FaultAgent:
        self.log_path = self.config.with_suffix(".log")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        with open(self.log_path, "a") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n")
            log.flush()
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "agent.cli", "run", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                preexec_fn=_die_with_parent,
            )
        wait_for(lambda: self.status() is not None, ready_timeout, "the agent's control socket")
        return self

    def uplink_state(self) -> str:
        return str(((self.status() or {}).get("uplink") or {}).get("state", ""))

    def outbox(self) -> dict[str, Any]:
        return dict((self.status() or {}).get("outbox") or {})


class Presser:
    """Presses (and releases) the fault buttons through the agent's control socket.

    A press whose reply does not come (the agent was killed) is counted as unacknowledged and
    is not in ``sent``: only an alarm the agent said it committed is promised.
    """

    def __init__(self, storage: Path, tally: Tally) -> None:
        self.sock = control.socket_path(storage)
        self.tally = tally
        self._released = {b["id"]: 0.0 for b in BUTTONS}

    def press(self) -> list[dict[str, Any]]:
        button = min(self._released, key=self._released.__getitem__)
        wait = self._released[button] + REARM_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            reply = control.call(self.sock, {"cmd": "simulate", "action": "press",
                                             "button": button}, timeout=10)
        except AgentError:
            self.tally.unacked_presses += 1
            raise
        events = [e for e in reply.get("events", []) if e and e.get("kind") == "panic"]
        self.tally.add(events)
        try:
            control.call(self.sock, {"cmd": "simulate", "action": "release", "button": button},
                         timeout=10)
        finally:
            self._released[button] = time.monotonic()
        return events

    def press_n(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in range(n):
            out += self.press()
        return out


# --- the centre ---------------------------------------------------------------------------------


class RawCollector:
    """Every copy of every alarm, with its arrival time: duplicates are counted here."""

    def __init__(self, host: str, port: int, client_id: str,
                 topics: tuple[str, ...] = ("schools/+/alarm",)) -> None:
        self.host, self.port, self.topics = host, port, topics
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, bytes]] = []
        self.subscribed = threading.Event()

    def start(self) -> None:
        c = self.client

        def on_connect(cl: mqtt.Client, *_: Any) -> None:
            for t in self.topics:
                cl.subscribe(t, qos=1)

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload)))

        c.on_connect = on_connect
        c.on_message = on_message
        c.on_subscribe = lambda *_: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        c.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # floats work
        c.connect_async(self.host, self.port, keepalive=5, clean_start=False, properties=props)
        c.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def alarms(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, json.loads(p)) for t, topic, p in self.messages
                    if topic.endswith("/alarm") and p]


class Centre:
    """The real receiver (receipts, presence, dedup into alarms.jsonl) and a raw collector.

    With ``netns``, both run on threads that entered that namespace first, so the centre's
    path to the broker (127.0.0.1 inside the broker's namespace) is never cut or shaped.
    """

    def __init__(self, host: str, port: int, store: Path, netns: str | None = None,
                 name: str = "centre") -> None:
        self.host, self.port, self.store, self.netns, self.name = host, port, store, netns, name
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.raw: RawCollector | None = None

    def start(self) -> Centre:
        self.stop_event = threading.Event()
        self.raw = RawCollector(self.host, self.port, f"{self.name}-raw",
                                topics=("schools/+/alarm", "schools/_centre/presence/+"))
        url = f"mqtt://{self.host}:{self.port}"

        def receiver() -> None:
            enter_netns(self.netns)
            run_receiver(url, "schools", self.store, f"{self.name}-rx", self.stop_event)

        self.thread = threading.Thread(target=receiver, name="centre", daemon=True)
        self.thread.start()
        run_in_netns(self.netns, self.raw.start)
        wait_for(self.raw.subscribed.is_set, 10, "the raw collector to subscribe")
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(5)
        if self.raw is not None:
            self.raw.stop()

    def listening(self) -> bool:
        """The receiver announced itself (retained presence), which it does only after
        subscribing: from now on the broker keeps every alarm for it."""
        if self.raw is None:
            return False
        with self.raw.lock:
            return any("/_centre/presence/" in topic and json.loads(p).get("state") == "online"
                       for _, topic, p in self.raw.messages if p)

    def alarms(self) -> list[dict[str, Any]]:
        path = self.store / "alarms.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def raw_alarms(self) -> list[dict[str, Any]]:
        return [a for _, a in self.raw.alarms()] if self.raw else []

    def received_ids(self) -> set[str]:
        """What the receiver stored: the end-to-end truth (the agent forgets an alarm only
        when the receiver's receipt names it). The raw collector only counts copies."""
        return {a["event_id"] for a in self.alarms()}

    def arrival(self, event_id: str) -> float | None:
        """Monotonic time of the first copy of an alarm at the raw collector."""
        for t, a in self.raw.alarms() if self.raw else []:
            if a["event_id"] == event_id:
                return t
        return None


# --- privileges, namespaces, the broker inside one -----------------------------------------------


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (run the suite as root, e.g. in CI)")


def sh(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str | None) -> None:
    """Move the CALLING THREAD into a named network namespace (setns(2) is per thread).

    Threads started afterwards from this thread inherit it, so a paho loop_start() called here
    opens its socket inside the namespace. Python 3.11 has no os.setns, hence ctypes.
    """
    if name is None:
        return
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(name: str | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a short-lived thread inside the namespace; threads it starts stay there."""
    if name is None:
        return fn()
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(name)
            box["value"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"in-{name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


@dataclass
class NsBroker:
    """A real Mosquitto inside a namespace (same config as agent/mosquitto.py): SIGKILL-able
    and restartable on the same port, dying with the test process (PR_SET_PDEATHSIG)."""

    netns: str
    workdir: Path
    port: int = MQTT_PORT
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 0.0.0.0\nallow_anonymous true\n"
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"persistence true\npersistence_location {self.workdir}/\n"
            "autosave_on_changes true\nautosave_interval 1\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, exe, "-c", str(conf)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

        def ready() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited; see {self.workdir}/mosquitto.log")
            if run_in_netns(self.netns, ready):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto in {self.netns} did not listen within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


_lab_counter = iter(range(1, 1 << 30))


def _reap_stale_namespaces() -> None:
    """Namespaces left by a test process that was itself SIGKILLed (finalizers never ran)."""
    r = sh("ip", "netns", "list", check=False)
    for line in r.stdout.splitlines():
        m = re.match(r"(fault-(\d+)-\d+-\w+)", line)
        if m and not Path(f"/proc/{m.group(2)}").exists():
            sh("ip", "netns", "del", m.group(1), check=False)


class NetLab:
    """box (the agent) --veth-- srv (the broker, the centre), both private namespaces.

        box: lo, <a-dev> 10.213.K.1/30          srv: lo, <b-dev> 10.213.K.2/30, mosquitto :1883

    The agent's MQTT host is 10.213.K.2, an address that exists only inside ``srv``. Neither
    namespace has a default route, so a cut link can only make packets fail, never leave.
    """

    def __init__(self, workdir: Path) -> None:
        n = next(_lab_counter)
        pid = os.getpid()
        self.box, self.srv = f"fault-{pid}-{n}-box", f"fault-{pid}-{n}-srv"
        tag = f"{pid % 100000}x{n}"
        self.a_dev, self.b_dev = f"fa{tag}", f"fb{tag}"  # <= 15 characters
        k = (pid + n) % 250 + 1
        self.a_addr, self.b_addr = f"10.213.{k}.1", f"10.213.{k}.2"
        self.broker = NsBroker(self.srv, workdir / "broker")
        self._shape_args: tuple[str, str, str] | None = None

    # set-up and tear-down
    def up(self) -> NetLab:
        _reap_stale_namespaces()
        sh("ip", "netns", "add", self.box)
        sh("ip", "netns", "add", self.srv)
        sh("ip", "link", "add", self.a_dev, "netns", self.box, "type", "veth",
           "peer", "name", self.b_dev, "netns", self.srv)
        for ns, dev, addr in ((self.box, self.a_dev, self.a_addr),
                              (self.srv, self.b_dev, self.b_addr)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.broker.start()
        return self

    def close(self) -> None:
        self.broker.kill()
        for ns in (self.box, self.srv):  # deleting a namespace deletes its veth end, qdiscs
            sh("ip", "netns", "del", ns, check=False)

    # faults
    def cut(self, mode: str = "down") -> None:
        """``down``: the broker's side of the cable goes dark (the agent's end loses carrier,
        its address and route stay, so TCP just hangs). ``blackhole``: the link stays up, with
        carrier, but every packet is dropped both ways (a ``pfifo limit 0`` qdisc: it accepts
        nothing; used instead of ``netem loss 100%`` because kernels without sch_netem, such
        as this CI's, still have pfifo). SYNs vanish too, so connect() hangs to its timeout."""
        if mode == "down":
            sh("ip", "-n", self.srv, "link", "set", self.b_dev, "down")
        elif mode == "blackhole":
            for ns, dev in ((self.box, self.a_dev), (self.srv, self.b_dev)):
                sh("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root",
                   "pfifo", "limit", "0")
        else:
            raise ValueError(mode)

    def restore(self) -> None:
        sh("ip", "-n", self.srv, "link", "set", self.b_dev, "up")
        for ns, dev in ((self.box, self.a_dev), (self.srv, self.b_dev)):
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        if self._shape_args is not None:
            self.shape(*self._shape_args)

    def shape(self, rate: str = "1mbit", burst: str = "16kb", latency: str = "100ms") -> None:
        """tbf on the agent's egress: the uplink is ``rate``; the broker's replies are not."""
        sh("ip", "netns", "exec", self.box, "tc", "qdisc", "replace", "dev", self.a_dev, "root",
           "tbf", "rate", rate, "burst", burst, "latency", latency)
        self._shape_args = (rate, burst, latency)

    def qdisc(self) -> str:
        return sh("ip", "netns", "exec", self.box, "tc", "qdisc", "show", "dev",
                  self.a_dev).stdout.strip()


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    need_root("network namespaces (ip netns, veth, tc)")
    if not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("iproute2 (ip, tc) is not installed")
    lab = NetLab(tmp_path)
    try:
        lab.up()
    except (RuntimeError, OSError) as exc:
        lab.close()
        pytest.skip(f"cannot build network namespaces here: {exc}")
    yield lab
    lab.close()


# --- storage faults ---------------------------------------------------------------------------


@dataclass
class Mount:
    path: Path
    device: str = ""  # the loop device, for ext4

    def sysfs(self) -> Path:
        return Path("/sys/fs/ext4") / Path(self.device).name


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Mount]]:
    """``tmpfs("4m")`` mounts a small tmpfs; unmounted (lazily if busy) at teardown."""
    need_root("mounting a tmpfs")
    mounted: list[Path] = []

    def make(size: str) -> Mount:
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        r = sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(path),
               check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(path)
        return Mount(path)

    yield make
    for path in reversed(mounted):
        if sh("umount", str(path), check=False).returncode != 0:
            sh("umount", "-l", str(path), check=False)


@pytest.fixture
def ext4_loop(tmp_path: Path) -> Iterator[Callable[[str], Mount]]:
    """``ext4_loop("16M")``: an ext4 image on a loop device, ``errors=remount-ro`` as an SD card
    is mounted; ``trigger_fs_error`` then makes the kernel remount it read-only, as it does
    when a card fails, even with files open for writing (which a plain ``mount -o remount,ro``
    refuses with EBUSY)."""
    need_root("a loop-mounted ext4 image")
    for tool in ("losetup", "mkfs.ext4"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    mounted: list[Path] = []

    def make(size: str) -> Mount:
        image = tmp_path / f"card{len(mounted)}.img"
        sh("truncate", "-s", size, str(image))
        sh("mkfs.ext4", "-q", "-F", str(image))
        path = tmp_path / f"card{len(mounted)}"
        path.mkdir()
        r = sh("mount", "-o", "loop,errors=remount-ro", str(image), str(path), check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot loop-mount an ext4 image here: {r.stderr.strip()}")
        mounted.append(path)
        dev = sh("findmnt", "-n", "-o", "SOURCE", str(path)).stdout.strip()
        return Mount(path, dev)

    yield make
    for path in reversed(mounted):
        if sh("umount", str(path), check=False).returncode != 0:
            sh("umount", "-l", str(path), check=False)


def fill_disk(path: Path) -> int:
    """Write until ENOSPC; returns the bytes written."""
    total = 0
    block = b"\0" * 65536
    with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
        while True:
            f.write(block)
            f.flush()
            total += len(block)
    with contextlib.suppress(OSError), open(path / "filler-small", "wb") as f:
        for _ in range(1 << 16):  # the last partial block
            f.write(b"\0" * 512)
            f.flush()
    return total


def kill_quietly(agent: AgentProcess) -> None:
    if agent.proc is not None and agent.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
