"""One hostile box against the centre (issue 10), through the production broker.

Every test here runs:

- the broker of docs/broker.md as written (mutual TLS, the ACLs, ``max_packet_size``, the
  per-box rate limit), from tests/brokerdoc.py. Tests marked ``unlimited_broker`` lift the rate
  limit, so that the receiver's own defences take the whole flood, as they must where the limit
  is set higher or a box stays under it; ``test_a_flood_at_full_speed`` measures the limit;
- the centre's receiver as the ЦОУ runs it: ``edge-agent central`` as a process, with the
  centre's client certificate on the centre listener, logging in journald's format;
- a hostile box, ``school-666``: its own certificate, so only its own topics, and any bytes;
- an honest school, ``school-001``, whose alarms are made by the box's own encoder
  (agent/delivery/protocol.py ``Alarm``) and timed from publish to the centre's receipt, which the
  receiver sends only once the alarm is in its ledger and in ``alarms.jsonl``.

:func:`probing` sends an honest alarm every PROBE_EVERY_S while an attack runs and samples the
receiver's memory; each test asserts that every honest alarm was stored within a second. The
figures are printed in the terminal summary ("hostile box") and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.centre.ledgerrecords import Report
from agent.clock import rfc3339
from agent.delivery.protocol import Alarm
from agent.testing.central import CentralProcess
from agent.testing.mqtt import MqttClient
from tests.brokerdoc import Broker, peer_options, start_broker
from tests.conftest import wait_for
from tests.pki import Pki, make_pki

HONEST, HOSTILE = "school-001", "school-666"
PROBE_EVERY_S = 0.2
ATTACK_S = 4.0  # each attack repeats for this long while the honest school probes
STORED_WITHIN_S = 1.0  # the bound for an honest alarm, throughout every attack
MEMORY_MB = 64  # the receiver's --memory-mb in these tests
_FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("hostile box")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def figure(line: str) -> None:
    """A measured figure for the terminal summary (and docs/benchmarks.md)."""
    _FIGURES.append(line)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# The rate limit's options (docs/broker.md), so high that no test here reaches them.
UNLIMITED = {
    "messages_per_second": "1e9",
    "messages_burst": "1e9",
    "bytes_per_second": "1e12",
    "bytes_burst": "1e12",
}


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    lifted = request.node.get_closest_marker("unlimited_broker") is not None
    b = start_broker(tmp_path / "broker", pki, log_info=False, limits=UNLIMITED if lifted else None)
    yield b
    b.mosquitto.kill()
    assert HONEST not in b.limited(), "the rate limit dropped the honest school's messages"


class CentreProcess(CentralProcess):
    """``edge-agent central`` with the centre's certificate, logging in journald's format."""

    def __init__(
        self, pki: Pki, port: int, store: Path, prefix: str = "schools", *extra: str
    ) -> None:
        centre = pki.client("centre")
        super().__init__(
            f"mqtts://localhost:{port}",
            store,
            "centre-rx",
            *("--tls-ca", str(pki.box_ca), "--tls-cert", str(centre.cert)),
            *("--tls-key", str(centre.key), "--topic-prefix", prefix),
            *("--memory-mb", str(MEMORY_MB), *extra),
            env={"PYTHONUNBUFFERED": "1", "JOURNAL_STREAM": "8:1"},
        )
        self.prefix = prefix

    def start(self, wait: bool = True) -> CentreProcess:
        super().start()
        if wait:
            wait_for(self.subscribed, 15, "the receiver's two links to subscribe")
        return self

    def subscribed(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the receiver exited: {self.output()[-2000:]}")
        return self.subscribed_since(0) is not None

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def reports(self, site: str, what: str | None = None) -> list[Report]:
        reports: list[Report] = self.ledger(lambda ledger: ledger.reports(site, newest=1000))
        return [r for r in reports if what is None or r.what == what]

    def alarms(self, site: str) -> list[dict[str, Any]]:
        alarms: list[dict[str, Any]] = self.ledger(lambda ledger: ledger.alarms(site))
        return alarms


@pytest.fixture
def centre(tmp_path: Path, pki: Pki, broker: Broker) -> Iterator[CentreProcess]:
    c = CentreProcess(pki, broker.centre_port, tmp_path / "centre").start()
    yield c
    c.stop()


class Box(MqttClient):
    """A school's box as the broker sees it: its certificate, its topics, nothing else."""

    def __init__(self, pki: Pki, port: int, site: str, prefix: str = "schools") -> None:
        super().__init__(port, client_id=site, **peer_options(pki, pki.site(site)))
        self.site, self.prefix = site, prefix
        self.seq = 0
        self.sent = 0  # messages flooded

    def start(self) -> Box:
        assert self.connect().online, self.error
        self.subscribe(self.topic("receipt"))
        return self

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/{self.site}/{kind}"

    def alarm(self, **changes: Any) -> Alarm:
        """The next alarm as the box's own encoder makes it."""
        self.seq += 1
        fields: dict[str, Any] = {
            "event_id": str(uuid.uuid4()),
            "seq": self.seq,
            "site_id": self.site,
            "button_id": "entrance",
            "location": "Главный вход, 1 этаж",
            "kind": "panic",
            "pressed_at": rfc3339(time.time()),
            "clock_synced": True,
            **changes,
        }
        return Alarm(**fields)

    def flood(self, topic: str, payloads: list[bytes], qos: int = 1) -> None:
        """Publish back to back, then wait until the broker has taken them all.

        A box the broker has disconnected sends nothing: counting its publishes as sent would
        report an attack that never reached the centre (and spin this process's GIL, starving
        the honest school's thread), so that fails the test here."""
        if self.gone.is_set():
            raise AssertionError(
                f"{self.site}: the broker closed this box's connection; "
                f"nothing more reaches the centre (flooding {topic!r})"
            )
        infos = [self.client.publish(topic, p, qos=qos) for p in payloads]
        wait_for(
            lambda: self.gone.is_set() or all(i.is_published() for i in infos),
            60,
            f"the broker to take {len(payloads)} messages",
        )
        self.sent += sum(i.is_published() for i in infos)

    def receipted(self, event_id: str) -> bool:
        return any(event_id in m.payload.decode() for m in self.received(self.topic("receipt")))

    def time_alarm(self, timeout: float = 10.0) -> tuple[str, float]:
        """Publish one alarm; seconds until the centre's receipt names it."""
        alarm = self.alarm()
        start = time.monotonic()
        self.client.publish(self.topic("alarm"), alarm.to_json(), qos=1)
        self.until(
            lambda: self.receipted(alarm.event_id),
            timeout,
            f"{self.site}: the receipt for {alarm.event_id}",
        )
        return alarm.event_id, time.monotonic() - start


@pytest.fixture
def boxes(pki: Pki, broker: Broker) -> Iterator[Callable[..., Box]]:
    made: list[Box] = []

    def box(site: str, prefix: str = "schools", port: int | None = None) -> Box:
        b = Box(pki, port or broker.box_port, site, prefix).start()
        made.append(b)
        return b

    yield box
    for b in made:
        b.close()


@dataclass
class Probe:
    """What the honest school saw while an attack ran."""

    latencies: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    attack: str = ""  # how much the hostile box sent, and how fast

    def check(self, name: str, centre: CentreProcess, site: str = HONEST) -> None:
        """Every honest alarm stored within STORED_WITHIN_S, and in the ledger; the figures."""
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2] * 1000
        figure(
            f"{name}: {self.attack}; {len(ordered)} honest alarms, publish -> stored p50 "
            f"{p50:.1f} ms, max {ordered[-1] * 1000:.1f} ms; receiver RSS max "
            f"{max(self.rss_mb):.0f} MB"
        )
        assert len(ordered) >= 5, "the honest school hardly got to send"
        assert ordered[-1] < STORED_WITHIN_S, f"{name}: an honest alarm took {ordered[-1]:.2f} s"
        stored = {a["event_id"] for a in centre.alarms(site)}
        assert set(self.events) <= stored


def rounds(seconds: float = ATTACK_S) -> Iterator[int]:
    """Attack rounds, for ``seconds``: ``for _ in rounds(): flood(...)``."""
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        yield i
        i += 1


@contextlib.contextmanager
def probing(honest: Box, centre: CentreProcess, hostile: Box) -> Iterator[Probe]:
    """While the body attacks, the honest school sends an alarm every PROBE_EVERY_S."""
    probe = Probe()
    sent, started = hostile.sent, time.monotonic()
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            while not stop.is_set():
                event, seconds = honest.time_alarm()
                probe.events.append(event)
                probe.latencies.append(seconds)
                probe.rss_mb.append(centre.rss_mb())
                stop.wait(PROBE_EVERY_S)
        except BaseException as exc:  # reported by the test, not lost in a thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="honest-school", daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        stop.set()
        thread.join(15)
        count, seconds = hostile.sent - sent, time.monotonic() - started
        probe.attack = f"{count} hostile messages in {seconds:.1f} s ({count / seconds:.0f}/s)"
    if failure:
        raise failure[0]
