"""Every disconnect point of a session, by enumeration: no unlucky moment is left to luck.

One deterministic session of the box, driven in phases that each wait for an observable state:

1. offline (the proxy holds the box's first connection: CONNECT sent, no CONNACK): two alarms
   pressed, and the first one's clips from two cameras queued, as the clips thread does;
2. connected: everything from phase 1 delivered, the centre's receipts back;
3. online: two more alarms, one at a time, each until the centre's receipt;
4. the centre acknowledges the newest alarm with a signed command (the one the indicator shows).

The box runs in-process (agent.box.daemon.Daemon on mock GPIO, no cameras) and reaches its own real
Mosquitto through tests/fault/mqtt_proxy.py; the centre's receiver connects to the broker
directly, so only the box's link is ever cut. A first run without a cut counts the packets of
the box's connection in each direction (N a2b, M b2a). Then one run per packet index k and
direction, in each mode (reset, black hole): the first connection is cut right after packet k.
After every run: each alarm the box acknowledged is stored exactly once at the centre
(alarms.jsonl and the ledger, no seq gap), each clip is written byte for byte and verified, the
command took effect (the indicator is steady for that alarm; a command lost with the link is
sent again with a fresh id, as an operator would), the box's outbox is empty and none of its
threads crashed or stalled. ``DISCONNECT_POINTS=b2a:7:rst,a2b:3:blackhole`` runs only those
cut points (their logs are then readable, not interleaved with others').
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from agent.box.daemon import CORE_THREADS, HEARTBEAT_STALE_S, Daemon
from agent.centre.commander import send_command
from agent.centre.ledger import Ledger
from agent.commands.keys import generate_keypair
from agent.config import load_config
from agent.config.model import Config
from agent.delivery.framing import CHUNK_BYTES
from agent.errors import AgentError
from agent.hardware.indicators import Pattern
from agent.sdnotify import Notifier
from agent.supervision import Supervisor
from agent.testing.broker import Mosquitto
from agent.video.clips import ClipSegment
from agent.video.segmenter import Segment
from agent.video.store import SegmentStore
from tests.conftest import wait_for
from tests.fault.conftest import Centre, fault_config, record_fault_line
from tests.fault.mqtt_proxy import Cut, CutMode, Direction, MqttProxy
from tests.video_fixtures import synthetic_segments

SITE = "sim-school"
# Config validation allows keepalive_s >= 5, which suits a school's link. Here a black hole
# that no alarm is waiting on is noticed only by keepalive (paho gives up ~2 x keepalive_s after
# the last byte in), and about sixty black-hole runs at 10-12 s each would not fit the CI budget.
# Not 1 s: Mosquitto drops a client silent for 1.5 x keepalive_s and the uplink's select() turn
# makes paho's ping up to 1 s late, so a healthy box would be dropped in the uncut session.
KEEPALIVE_S = 2
WORKERS = 8  # runs at once: a black-hole run mostly waits on the box's timers, not on a CPU
SETTLE_S = 20.0  # the longest a phase may take, cut included (a black hole costs ~5 s)
COMMAND_TIMEOUT_S = 3.0  # per attempt: a command lost with the link is sent again


@dataclass(frozen=True)
class Material:
    """What every run shares: each camera's clip segments, and the centre's command key."""

    segments: dict[str, list[Segment]]
    centre_key: Path
    centre_pub: Path


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    # cam-a's segments (~19 KB) go as two chunks each, cam-b's (~12 KB) whole: the receiver
    # must reassemble split segments as well as take whole ones.
    segments = {
        cam: synthetic_segments(cam, 2, bitrate_kbps=kbps)
        for cam, kbps in (("cam-a", 150), ("cam-b", 50))
    }
    chunks = {cam: [-(-len(s.data) // CHUNK_BYTES) for s in segs] for cam, segs in segments.items()}
    assert chunks == {"cam-a": [2, 2], "cam-b": [1, 1]}, f"the encoder changed: {chunks}"
    key, pub = generate_keypair(tmp_path_factory.mktemp("centre-keys"))
    return Material(segments, key, pub)


@dataclass
class Outcome:
    cut: Cut | None
    cut_at: str  # "" when the session never reached the cut point
    counts: dict[Direction, int]  # numbered packets on the first connection
    connections: int
    acked: list[str]
    lost: list[str]
    duplicated: int  # alarms stored more than once at the centre
    resent: int  # alarm copies that reached the broker beyond the first (allowed)
    clips_verified: int
    command_attempts: int
    problems: list[str]
    trace: str
    seconds: float


class Session:
    """One run: a broker, the centre's receiver (straight to the broker), the proxy, the box."""

    def __init__(self, workdir: Path, material: Material, cut: Cut | None) -> None:
        self.workdir = workdir
        self.material = material
        self.cut = cut
        self.broker = Mosquitto(workdir / "broker")
        self.centre = Centre("127.0.0.1", self.broker.port, workdir / "centre")
        self.proxy = MqttProxy(self.broker.port, cut, hold_first=True)
        self.daemon: Daemon | None = None  # made once the proxy's port is known
        self.gave_up: list[str] = []  # the supervisor would exit the process (pytest's, here)
        self.spool = SegmentStore(
            workdir / "state" / "spool", workdir / "state" / "spool.db", 10**9
        )
        self.acked: list[str] = []  # event ids of the alarms the box committed, in press order
        self.problems: list[str] = []
        self.command_attempts = 0

    @property
    def box(self) -> Daemon:
        assert self.daemon is not None, "the box was not started"
        return self.daemon

    def run(self) -> Outcome:
        started = time.monotonic()
        try:
            self.broker.start()
            self.centre.start()
            self.proxy.start()
            wait_for(self.centre.listening, 10, "the centre's receiver to announce itself")
            cfg = _config(self.workdir, self.proxy.port, self.material.centre_pub)
            self.daemon = Daemon(
                cfg,
                Notifier(None),
                pin_factory=MockFactory(),
                supervisor=Supervisor(give_up=self.gave_up.append),
            )
            self.box.start()
            self.spool.open()
            self._drive()
        except (AssertionError, AgentError) as exc:  # a phase timed out: check the rest anyway
            self.problems.append(str(exc))
        finally:
            first = self.proxy.first()  # counted before the box's goodbye at stop
            counts = {d: len(first.packets[d]) if first else 0 for d in Direction}
            self._stop()
        return self._outcome(counts, time.monotonic() - started)

    # --- the session ----------------------------------------------------------------------------

    def _drive(self) -> None:
        self._press("b1")
        self._press("b2")
        self._queue_clips(self.acked[0])
        self.proxy.release()
        self._settle("the offline alarms and the clips")
        for button in ("b3", "b4"):
            self._press(button)
            self._settle(f"the alarm of {button}")
        self._acknowledge(self.acked[-1])
        self._settle("the command's result")
        assert self.box.indicators is not None
        if (self.box.indicators.pattern, self.box.indicators.event_id) != (
            Pattern.ACKNOWLEDGED,
            self.acked[-1],
        ):
            self.problems.append(
                f"the ack did not take effect: indicator {self.box.indicators.pattern}"
            )
        supervisor = self.box.supervisor
        if crashes := supervisor.status():  # restarted, but a crash is a bug all the same
            self.problems.append(f"thread crashes: {crashes}")
        if stale := supervisor.stale(HEARTBEAT_STALE_S, CORE_THREADS):
            self.problems.append(f"thread(s) dead or stuck: {stale}")
        if self.gave_up:
            self.problems.append(f"the supervisor gave up: {self.gave_up}")
        if self.centre.receiver is None or not self.centre.receiver.subscribed:
            self.problems.append("the centre's receiver lost the broker")

    def _press(self, button: str) -> None:
        assert self.box.buttons is not None
        events = self.box.buttons.simulate(button, True)
        self.box.buttons.simulate(button, False)
        self.acked += [e["event_id"] for e in events if e and e["kind"] == "panic"]

    def _queue_clips(self, event_id: str) -> None:
        """Store each camera's segments pinned to the alarm and hand them to the daemon's
        callback for the clips thread, which chunks, signs and queues them in the outbox."""
        for cam, segments in self.material.segments.items():
            for pos, s in enumerate(segments):
                ref = self.spool.put(s, pins=[event_id])
                self.box._on_clip_segment(
                    ClipSegment(
                        event_id, cam, pos, pos == len(segments) - 1, ref, False, s.prev, s.link
                    )
                )

    def _acknowledge(self, event_id: str) -> None:
        deadline = time.monotonic() + SETTLE_S
        while True:
            self.command_attempts += 1
            try:
                result = send_command(
                    self.broker.url,
                    "schools",
                    SITE,
                    self.material.centre_key,
                    "ack",
                    {"event_id": event_id},
                    timeout_s=COMMAND_TIMEOUT_S,
                )
                break
            except AgentError:  # lost with the link: an operator sends it again
                if time.monotonic() > deadline:
                    raise
        if result.get("ok") is not True:
            self.problems.append(f"the ack command was refused: {result}")

    def _settle(self, what: str) -> None:
        wait_for(self._quiet, SETTLE_S, f"{what} (box outbox empty, everything at the centre)")

    def _quiet(self) -> bool:
        assert self.box.outbox is not None
        if any(self.box.outbox.depth().values()):
            return False
        if not set(self.acked) <= self.centre.received_ids():
            return False
        return all(
            self._clip_dir().joinpath(f"{cam}.verify.json").exists()
            for cam in self.material.segments
        )

    def _clip_dir(self) -> Path:
        return self.centre.store / SITE / self.acked[0]

    # --- after the session --------------------------------------------------------------------

    def _stop(self) -> None:
        if self.daemon is not None and self.daemon.outbox is not None:  # started
            self.daemon.stop()
        self.centre.stop()
        self.spool.close()
        self.broker.kill()
        self.proxy.close()

    def _outcome(self, counts: dict[Direction, int], seconds: float) -> Outcome:
        stored = [a["event_id"] for a in self.centre.alarms()]
        ledger = Ledger.open(self.centre.store)
        try:
            in_ledger = {a["event_id"] for a in ledger.alarms(SITE)}
            gaps = ledger.gaps()
        finally:
            ledger.close()
        lost = [e for e in self.acked if e not in stored or e not in in_ledger]
        duplicated = len(stored) - len(set(stored))
        if unexpected := set(stored) - set(self.acked):
            self.problems.append(f"alarms nobody pressed: {sorted(unexpected)}")
        if gaps:
            self.problems.append(f"seq gaps in the ledger: {gaps}")
        if lost or duplicated:
            self.problems.append(f"lost {lost}, duplicated {duplicated}")
        raw = [a["event_id"] for a in self.centre.raw_alarms()]
        return Outcome(
            self.cut,
            self.proxy.cut_at,
            counts,
            len(self.proxy.links),
            self.acked,
            lost,
            duplicated,
            len(raw) - len(set(raw)),
            self._clips_verified(),
            self.command_attempts,
            self.problems,
            self.proxy.trace(),
            seconds,
        )

    def _clips_verified(self) -> int:
        if not self.acked:
            return 0  # the run failed before the first press; its problem says why
        verified = 0
        for cam, segments in self.material.segments.items():
            ts, report = (self._clip_dir() / f"{cam}{ext}" for ext in (".ts", ".verify.json"))
            if not report.exists():
                self.problems.append(f"clip {cam} never written")
                continue
            problem = json.loads(report.read_text())["problem"]
            if problem:
                self.problems.append(f"clip {cam} failed verification: {problem}")
            elif ts.read_bytes() != b"".join(s.data for s in segments):
                self.problems.append(f"clip {cam} verified but its bytes differ")
            else:
                verified += 1
        return verified


def _config(workdir: Path, port: int, centre_pub: Path) -> Config:
    workdir.mkdir(parents=True, exist_ok=True)
    path = fault_config(
        workdir / "agent.yaml",
        workdir / "state",
        port=port,
        commands={"public_key_file": str(centre_pub)},
    )
    cfg = load_config(path)
    return replace(cfg, mqtt=replace(cfg.mqtt, keepalive_s=KEEPALIVE_S))


def _plan(counts: dict[Direction, int]) -> list[Cut]:
    """After each packet each way, and once before any (a2b 0: the box's CONNECT never passes)."""
    every = [
        Cut(d, k, m)
        for m in CutMode
        for d in Direction
        for k in range(0 if d is Direction.A2B else 1, counts[d] + 1)
    ]
    chosen = os.environ.get("DISCONNECT_POINTS")
    if not chosen:
        return every
    wanted = {tuple(p.split(":")) for p in chosen.split(",")}
    return [c for c in every if (c.direction, str(c.after), c.mode) in wanted]


def _failure(o: Outcome) -> str:
    return f"{o.cut_at or o.cut}: {'; '.join(o.problems)}\n    {o.trace}"


def test_every_disconnect_point_loses_and_duplicates_nothing(
    tmp_path: Path, material: Material
) -> None:
    started = time.monotonic()
    base = Session(tmp_path / "count", material, None).run()
    assert not base.problems, f"the uncut session failed: {_failure(base)}"
    assert base.connections == 1, f"the uncut session reconnected: {base.trace}"
    plan = _plan(base.counts)

    def run(numbered: tuple[int, Cut]) -> Outcome:
        return Session(tmp_path / f"r{numbered[0]}", material, numbered[1]).run()

    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(run, enumerate(plan)))
    for o in outcomes:
        if not o.cut_at:
            o.problems.append(f"cut point never reached: the session sent {o.counts}")
    by_mode = {m: sum(o.cut is not None and o.cut.mode is m for o in outcomes) for m in CutMode}
    record_fault_line(
        f"FAULT disconnect_points: cut_points={len(outcomes)} rst={by_mode[CutMode.RST]} "
        f"blackhole={by_mode[CutMode.BLACKHOLE]} lost={sum(len(o.lost) for o in outcomes)} "
        f"duplicated={sum(o.duplicated for o in outcomes)} "
        f"clips_verified={sum(o.clips_verified for o in outcomes)} "
        f"a2b={base.counts[Direction.A2B]} b2a={base.counts[Direction.B2A]} "
        f"reached={sum(bool(o.cut_at) for o in outcomes)} "
        f"alarms={sum(len(o.acked) for o in outcomes)} resent={sum(o.resent for o in outcomes)} "
        f"command_retries={sum(max(0, o.command_attempts - 1) for o in outcomes)} "
        f"slowest_run_s={max((o.seconds for o in outcomes), default=0):.1f} "
        f"seconds={time.monotonic() - started:.0f}"
    )
    failures = [_failure(o) for o in outcomes if o.problems]
    assert not failures, f"{len(failures)} cut point(s) failed:\n" + "\n".join(failures)
