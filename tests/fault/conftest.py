"""Fault injection: the pieces every fault test shares.

Each fault test drives the agent as a process (the way systemd runs it), injects one kind of
failure, and prints one line that a person or CI can grep:

    FAULT <name>: sent=N received=N lost=N duplicated=N [extra=...]

- sent: alarms the agent acknowledged as committed (the events a `simulate press` returned:
  the same reply `edge-agent simulate` prints; we call the control socket directly to save a
  Python start-up per press).
- received: distinct event_ids the centre stored (the real receiver, agent/centre/cli.py, which
  confirms each alarm with a receipt; arrival order is its order of first arrival).
- lost: acknowledged alarms that never arrived. Every fault test asserts lost == 0.
- duplicated: copies beyond the first seen by the raw collector, a second subscriber that
  records every copy with its arrival time (at-least-once: duplicates are allowed).

What is here:
- :class:`Tally`: the bookkeeping and the FAULT line (also repeated in the terminal summary).
- :class:`Presser`: presses buttons through the control socket, re-arming each button first.
- :class:`Centre`: the harness's receiver (agent/testing/site.py) plus the raw collector,
  optionally inside a namespace.
- :func:`fault_site`: the agent, the centre, the tally and the presser of one test, started
  and stopped as one; :func:`prefill_clips`: a clip backlog queued before the agent starts.
- tests/fault/mqtt_proxy.py: a proxy that cuts the box's link right after its k-th MQTT packet.
- fixture ``netlab``: agent/testing/netns.py's NetLab, two network namespaces joined by a veth
  pair, the broker in one, the agent in the other; cut, restore and shape the link.
- the agent is agent/testing/site.py's ``AgentProcess``, which can run in a namespace and with
  extra environment (libfaketime).
- fixtures ``tmpfs`` and ``ext4_loop`` for the storage faults; everything is torn down in
  finalizers even when a test fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.box import control
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Priority
from agent.errors import AgentError
from agent.testing import wait_for
from agent.testing.broker import Mosquitto
from agent.testing.mqtt import MqttClient
from agent.testing.netns import MQTT_PORT, NetLab, run_in_netns, sh
from agent.testing.site import AgentProcess, school_config
from agent.testing.site import Centre as Receiver

# Six normally-open buttons without hold_s: a press is an alarm on the first edge, and a tight
# loop can rotate through them while each one re-arms (release_s = 50 ms,
# agent/hardware/buttons.py).
BUTTONS = [
    {"id": f"b{i}", "pin": pin, "location": f"Fault-test room {i}", "wiring": "normally_open"}
    for i, pin in enumerate((5, 6, 12, 13, 16, 26), start=1)
]
REARM_S = 0.06  # release_s (50 ms) plus a margin
CLIP_CHUNK = 16_000  # the data of one chunk of a prefilled clip backlog
KEEPALIVE_S = 5  # the smallest the config allows; a dead link is noticed within 2 x this

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
            "sent": self.sent,
            "received": len(received),
            "lost": len(lost),
            "duplicated": duplicated,
            "seq_gaps": len(gaps),
            "out_of_order": late,
            "acked_seq_increasing": all(a < b for a, b in itertools.pairwise(acked_seqs)),
            "unacked_arrived": len(received - set(self.acked)),
            "lost_ids": lost,
        }
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        line = (
            f"FAULT {self.name}: sent={self.sent} received={len(received)} "
            f"lost={len(lost)} duplicated={duplicated}"
            f" seq_gaps={len(gaps)} out_of_order={late}" + (f" {tail}" if tail else "")
        )
        record_fault_line(line)
        return info

    def assert_ok(
        self,
        info: dict[str, Any],
        *,
        in_order: bool = True,
        no_gaps: bool = True,
        seq_increasing: bool = True,
    ) -> None:
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
        seeds = [
            *REGRESSION_SEEDS.get(metafunc.function.__name__, ()),
            *(fresh.randrange(1, 2**31) for _ in range(metafunc.config.getoption("--fault-seeds"))),
        ]
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


def fault_config(
    path: Path, storage: Path, host: str = "127.0.0.1", port: int = MQTT_PORT, **sections: Any
) -> Path:
    """The simulated school with six plain buttons, pointed at ``host:port``."""
    return school_config(
        path, port=port, storage=storage, host=host, **{"buttons": BUTTONS, **sections}
    )


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
            reply = control.call(
                self.sock, {"cmd": "simulate", "action": "press", "button": button}, timeout=10
            )
        except AgentError:
            self.tally.unacked_presses += 1
            raise
        events = [e for e in reply.get("events", []) if e and e.get("kind") == "panic"]
        self.tally.add(events)
        try:
            control.call(
                self.sock, {"cmd": "simulate", "action": "release", "button": button}, timeout=10
            )
        finally:
            self._released[button] = time.monotonic()
        return events

    def press_n(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in range(n):
            out += self.press()
        return out


# --- the centre ---------------------------------------------------------------------------------


class Centre(Receiver):
    """The real receiver (receipts, presence, dedup into alarms.jsonl) and a raw collector that
    keeps every copy of every alarm with its arrival time: duplicates are counted there.

    With ``netns``, both connect from inside that namespace, so the centre's path to the
    broker (127.0.0.1 inside the broker's namespace) is never cut or shaped.
    """

    def __init__(
        self, host: str, port: int, store: Path, netns: str | None = None, name: str = "centre"
    ) -> None:
        super().__init__(f"mqtt://{host}:{port}", store, client_id=f"{name}-rx", netns=netns)
        self.raw = MqttClient(
            port,
            ["schools/+/alarm", "schools/_centre/presence/+"],
            host=host,
            client_id=f"{name}-raw",
            persistent=True,
            keepalive=5,
        )

    def start(self, subscribed_s: float | None = 10.0) -> Centre:
        super().start(subscribed_s)
        run_in_netns(self.netns, lambda: self.raw.connect(10))
        return self

    def stop(self) -> None:
        super().stop()
        self.raw.close()

    def listening(self) -> bool:
        """The receiver announced itself (retained presence), which it does only after
        subscribing: from now on the broker keeps every alarm for it."""
        return any(
            p.get("state") == "online" for p in self.raw.payloads("schools/_centre/presence/+")
        )

    def raw_alarms(self) -> list[dict[str, Any]]:
        return self.raw.payloads("schools/+/alarm")

    def arrival(self, event_id: str) -> float | None:
        """Monotonic time of the first copy of an alarm at the raw collector."""
        for m in self.raw.received("schools/+/alarm"):
            if m.payload and m.json()["event_id"] == event_id:
                return m.at
        return None


# --- one test's site -------------------------------------------------------------------------


@dataclass
class FaultSite:
    """What a fault test drives and checks: the agent as a process, the centre, the tally of
    what was acknowledged and the presser that keeps it."""

    agent: AgentProcess
    centre: Centre
    tally: Tally
    presser: Presser

    def online(self) -> None:
        """Until the agent is online and has seen the centre's presence: from then on the
        broker keeps every alarm for the centre."""
        wait_for(lambda: self.agent.uplink_state() == "online", 15, "the agent online")
        wait_for(
            lambda: (self.agent.status() or {})["uplink"]["centre"] == "listening",
            10,
            "the centre's presence at the agent",
        )


@contextlib.contextmanager
def fault_site(
    name: str,
    tmp_path: Path,
    broker: Mosquitto | NetLab,
    *,
    storage: Path | None = None,
    start: bool = True,
    env: dict[str, str] | None = None,
    **sections: Any,
) -> Iterator[FaultSite]:
    """The fault school (``sections`` over :func:`fault_config`) as a process, storage in
    ``storage`` (default ``tmp_path/state``), and the centre (started), on ``broker``; on a
    :class:`NetLab` the agent runs in its box namespace and the centre in the broker's. With
    ``start``, the agent is started and :meth:`FaultSite.online`; both are stopped at the end,
    whatever happened."""
    storage = storage or tmp_path / "state"
    netns: tuple[str | None, str | None]
    if isinstance(broker, NetLab):
        host, port, netns = broker.b_addr, MQTT_PORT, (broker.srv, broker.box)
    else:
        host, port, netns = "127.0.0.1", broker.port, (None, None)
    cfg = fault_config(tmp_path / "agent.yaml", storage, host=host, port=port, **sections)
    centre = Centre("127.0.0.1", port, tmp_path / "centre", netns=netns[0], name=f"c-{name}")
    agent = AgentProcess(cfg, netns=netns[1], env=env or {})
    tally = Tally(name)
    site = FaultSite(agent, centre, tally, Presser(storage, tally))
    try:
        centre.start()
        if start:
            agent.start()
            site.online()
        yield site
    finally:
        agent.close()
        centre.stop()


def prefill_clips(db: Path, n: int, cameras: tuple[str, ...] = ("fault-cam",)) -> None:
    """A backlog of ``n`` clip chunks (a few bytes of header, 16 KB of data) queued before
    the agent starts, as after a long outage; several cameras' chunks interleave, as two
    alarms' clips are queued."""
    box = Outbox.open(db)
    try:
        box.add_many(
            (
                Priority.CLIP,
                f"schools/sim-school/clip/{cameras[i % len(cameras)]}",
                f"clip-{i}",
                b"%06d\n" % i + bytes(CLIP_CHUNK),
                None,
            )
            for i in range(n)
        )
    finally:
        box.close()


# --- privileges, namespaces -----------------------------------------------------------------------


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (run the suite as root, e.g. in CI)")


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    need_root("network namespaces (ip netns, veth, tc)")
    if not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("iproute2 (ip, tc) is not installed")
    lab = NetLab(tmp_path)
    try:
        lab.up()
    except (RuntimeError, OSError) as exc:
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
        r = sh(
            "mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(path), check=False
        )
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
