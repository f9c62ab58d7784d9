"""DC-09: press -> ACK through the agent beside MQTT, and the transmitter alone as the floor.

    .venv/bin/python -m bench.dc09                   # both parts, markdown (~90 s)
    .venv/bin/python -m bench.dc09 --part agent --presses 500 --outages 5
    .venv/bin/python -m bench.dc09 --part transmitter --events 100 --json

**The agent** (issue 13's figure): the real ``Daemon`` in this process on the public harness
(agent/testing: ``InProcessAgent`` on the simulated school's config from ``school_config``,
buttons numbered as DC-09 zones; mock GPIO, no cameras, storage on a real disk), a private
Mosquitto, one pysiaalarm receiver (TCP, the default timings), and the harness's MQTT client
playing the centre (presence, a receipt per alarm). Per press, one at a time:

    t0 = perf_counter(); the entrance's mock pin (17) driven low
    MQTT   t1 in the centre's on_message for that alarm (then the receipt, untimed)
    DC-09  t1 when the transmitter hands the receiver's ACK to the outbox (the queue's
           ``acked``, wrapped on the running object: no agent code is edited; the DC-09 path
           has no tracing point, see ``AckClock``)

then the release, the re-arm (50 ms) and both paths' bookkeeping settle before the next press.
Both paths must deliver every press (pysiaalarm's decoded count is checked at the end). Then
the outages: the receiver stops, a press is committed (its MQTT latency is kept: the other
path must not wait), the path is seen down, the receiver restarts on the same port, and we time
from its return to the queued event's ACK: the pause after failed rounds (agent/backoff.py from
``ack_timeout_s`` 5 s) plus the reconnect.

**The transmitter alone** (phase 1's floor), per case (TCP/UDP, plain/AES-128), on one
pysiaalarm receiver on a free loopback port:

    transmitter  t0 = perf_counter(); MemoryQueue.put(event); Transmitter.wake()  ->  t1 when
                 the transmitter calls queue.acked() for it. Covers the wake-up, encoding,
                 transliteration, AES, the socket round trip and pysiaalarm's parsing.
    baseline     t0; a prebuilt frame sent on a plain socket  ->  t1 when the ACK's CR is read.
                 The floor: pysiaalarm's own time plus loopback.

The two are interleaved event by event so both see the same noise; percentiles are
nearest-rank. Then the outage: the receiver is stopped, an event is queued, the path is seen
down, the receiver restarts on the same port, and we time from its return to the queued event's
ACK (bounded by the pause after failed rounds, ``retry_max_s``, default 10 s).

Bounded: every wait times out (exit 1 naming the step); agents, receivers and the broker are
stopped in ``finally``. The agent part's work dir (configs, storage) is removed after a good run
and kept, with its path printed, after a failed one.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from pysiaalarm import SIAAccount

from agent.delivery.dc09.events import Event, EventKind, MessageFormat, encode
from agent.delivery.dc09.frame import Address, build
from agent.delivery.dc09.queue import MemoryQueue
from agent.delivery.dc09.settings import Receiver, Settings, Transport
from agent.delivery.dc09.transmitter import Transmitter
from agent.delivery.protocol import Receipt, centre_presence_topic, presence_payload
from agent.supervision import Supervisor
from agent.testing import bench, wait_for
from agent.testing.broker import Mosquitto
from agent.testing.mqtt import MqttClient, Received, Will
from agent.testing.sia import SiaReceiver, zoned_school
from agent.testing.site import InProcessAgent
from agent.testing.stats import describe, machine_context

KEY_TEXT = "0123456789ABCDEF"  # pysiaalarm uses the key text's ASCII bytes as the AES key


class Timed(MemoryQueue):
    def __init__(self) -> None:
        super().__init__()
        self.acked_at: dict[int, float] = {}
        self.cond = threading.Condition()

    def acked(self, event_id: int) -> None:
        t = time.perf_counter()
        super().acked(event_id)
        with self.cond:
            self.acked_at[event_id] = t
            self.cond.notify_all()

    def wait(self, event_id: int, timeout: float, step: str) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: event_id in self.acked_at, timeout):
                sys.exit(f"timed out after {timeout} s: {step}")
            return self.acked_at[event_id]


def receiver(transport: Transport, key: bool, port: int = 0) -> SiaReceiver:
    """pysiaalarm on loopback; its ``stop`` also closes the connections it accepted (as a
    receiver that goes away does: pysiaalarm's own leaves them answering)."""
    return SiaReceiver(transport, [SIAAccount("1234", KEY_TEXT if key else None)], port).start()


def baseline(sock: socket.socket, frame: bytes, transport: Transport) -> float:
    t0 = time.perf_counter()
    sock.sendall(frame)
    buf = b""
    while not buf.endswith(b"\r"):
        data = sock.recv(4096)
        if not data:
            sys.exit("baseline: the receiver closed the connection")
        buf = data if transport is Transport.UDP else buf + data
    return time.perf_counter() - t0


def run_case(transport: Transport, key: bool, n: int) -> dict[str, Any]:
    rx = receiver(transport, key)
    sup = Supervisor(give_up=lambda why: sys.exit(f"supervisor gave up: {why}"))
    queue = Timed()
    r = Receiver(
        "127.0.0.1", rx.port, transport, "1234", "1", "2", KEY_TEXT.encode() if key else None
    )
    tx = Transmitter(Settings((r,), ack_timeout_s=2.0, test_report_s=None), queue)
    kind = socket.SOCK_STREAM if transport is Transport.TCP else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(5)
    ours: list[float] = []
    base: list[float] = []
    try:
        sock.connect(("127.0.0.1", rx.port))
        tx.start(sup)
        event = Event(EventKind.PANIC, 7, "Главный вход")
        msg = encode(event, MessageFormat.SIA_DCS, "1234")
        for i in range(n + 20):  # 20 warm-up
            frame = build(
                msg.token,
                i % 9999 + 1,
                Address("1234", "1", "2"),
                msg.data,
                extended=msg.extended,
                sent_at=time.time(),
                key=KEY_TEXT.encode() if key else None,
            )
            b = baseline(sock, frame, transport)
            t0 = time.perf_counter()
            event_id = queue.put(event)
            tx.wake()
            t1 = queue.wait(event_id, 5, f"event {i} acknowledged")
            if i >= 20:
                base.append(b)
                ours.append(t1 - t0)
        # The outage: stopped, an event queued, the path down, back on the same port.
        rx.stop()
        event_id = queue.put(event)
        tx.wake()
        deadline = time.monotonic() + 60
        while tx.status().path_ok is not False:
            if time.monotonic() > deadline:
                sys.exit("timed out: the path seen down")
            time.sleep(0.01)
        returned = time.perf_counter()
        rx = receiver(transport, key, rx.port)
        recovery = queue.wait(event_id, 60, "the queued event after the outage") - returned
    finally:
        tx.stop()
        sock.close()
        rx.stop()
    d, b = describe(ours), describe(base)
    return {
        "case": f"{transport}{' AES-128' if key else ''}",
        "events": n,
        "p50_ms": d["p50_ms"],
        "p99_ms": d["p99_ms"],
        "base_p50_ms": b["p50_ms"],
        "base_p99_ms": b["p99_ms"],
        "recovery_s": recovery,
    }


# --- the agent: each press to the MQTT centre and to the DC-09 receiver ----------------------


SITES = ("sim-school", "mqtt-only")  # the agent measured, and the baseline without DC-09
WAIT_S = 10.0  # any single wait; a press that takes this long is a failure, not a sample
PRESENCE = centre_presence_topic("schools", "bench-centre")
BUTTON, BUTTON_PIN = "entrance", 17  # normally open, no hold_s: the first edge is the alarm
ENTRANCE = "Главный вход, 1 этаж"  # as a school writes it: DC-09 transliterates it
# The centre's client never pings during a run: a PINGRESP its kernel has not yet ACKed would
# hold a receipt under Nagle (bench/alarm_latency.py).
CENTRE_KEEPALIVE_S = 600


class CentreDesk:
    """The centre's MQTT side on the harness's client (agent/testing/mqtt.py), reduced to what
    the agents see of it: presence (retained, and its will), and a receipt for each alarm, sent
    from the client's ``on_message`` hook on paho's thread. ``arrivals[site]`` keeps t1 of each
    button alarm, in order: the client's ``Received.at``, time.monotonic() taken first thing in
    paho's on_message (on Linux the clock perf_counter reads); the boxes' own faults (the DC-09
    path down and back during the outages) get their receipt and are not counted."""

    def __init__(self, port: int) -> None:
        self.arrivals: dict[str, list[float]] = {site: [] for site in SITES}
        self.client = MqttClient(
            port,
            ["schools/+/alarm"],
            client_id="bench-centre",
            keepalive=CENTRE_KEEPALIVE_S,
            on_message=self._on_alarm,
            will=Will(PRESENCE, presence_payload("offline", time.time())),
        )

    def start(self) -> None:
        self.client.connect(WAIT_S)
        self.client.publish(
            PRESENCE, presence_payload("online", time.time()), retain=True, timeout=WAIT_S
        )

    def stop(self) -> None:
        self.client.close()

    def _on_alarm(self, got: Received) -> None:
        alarm = got.json()
        self.client.send(
            f"schools/{alarm['site_id']}/receipt", Receipt(alarms=(alarm["event_id"],)).to_json()
        )
        if alarm["button_id"]:
            self.arrivals[alarm["site_id"]].append(got.at)  # before the client wakes waiters

    def wait(self, site: str, n: int, step: str) -> float:
        """t1 of the site's n-th button alarm (from 1)."""
        arrivals = self.arrivals[site]
        self.client.until(lambda: len(arrivals) >= n, WAIT_S, f"{step} at the MQTT centre")
        return arrivals[n - 1]


class AckClock:
    """When the agent's DC-09 queue is told an event was acknowledged: ``acked`` shadowed on
    the running queue object (``daemon.dc09.queue``; the class and the agent's code are
    untouched). The one wrap left in the benches: agent/tracing.py has no point on the DC-09
    path (its points are the MQTT alarm's, the commands' and the centre's), and this is the
    moment a point there would mark, the receiver's ACK handed to the outbox."""

    def __init__(self, queue: Any) -> None:
        self.cond = threading.Condition()
        self.times: list[float] = []
        acked = queue.acked

        def timed(event_id: int) -> None:
            t1 = time.perf_counter()
            acked(event_id)
            with self.cond:
                self.times.append(t1)
                self.cond.notify_all()

        queue.acked = timed

    def wait(self, n: int, step: str, timeout: float = WAIT_S) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.times) >= n, timeout):
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {step} to be acknowledged on DC-09"
                )
            return self.times[n - 1]


def start_box(workdir: Path, site: str, broker_port: int, rx_port: int | None) -> InProcessAgent:
    """One agent of the run: the simulated school (buttons numbered, the entrance's location
    in Russian) as ``site``, on its own storage and mock pins, in this process; with
    ``rx_port`` None the baseline, the same agent without the DC-09 path."""
    dc09 = (
        {}
        if rx_port is None
        else {
            "dc09": {
                "account": "1234",
                "test_report_s": 0,  # else the default timings
                "receivers": [{"host": "127.0.0.1", "port": rx_port}],
            }
        }
    )
    config = zoned_school(
        workdir / f"{site}.yaml",
        port=broker_port,
        storage=workdir / site,
        site={"id": site},
        buttons={BUTTON: {"location": ENTRANCE}},
        **dc09,
    )
    return InProcessAgent(config).start(WAIT_S)


def settle(box: InProcessAgent, site: str) -> None:
    """Until the button is re-armed (50 ms of stable release) and every path is done with
    the press (the MQTT receipt deleted the alarm, the DC-09 row acknowledged)."""
    d = box.daemon
    board, outbox = d.buttons, d.outbox
    assert board is not None and outbox is not None
    time.sleep(0.06)
    wait_for(
        lambda: (
            board.snapshot()[BUTTON]["state"] == "idle"
            and not any(outbox.depth().values())
            and not (d.dc09 and d.dc09.queue.depth())
        ),
        WAIT_S,
        f"{site} to settle after a press",
        poll_s=0.002,
    )


def run_agent(presses: int, outages: int, workdir: Path) -> dict[str, Any]:
    broker = Mosquitto(workdir / "broker")
    rx = SiaReceiver(Transport.TCP, [SIAAccount("1234", None)])
    desk = CentreDesk(broker.port)
    boxes: list[InProcessAgent] = []
    times: dict[str, list[float]] = {"dc09": [], "mqtt": [], "mqtt_only": [], "outage_mqtt": []}
    recovery_s: list[float] = []
    decoded = 0  # distinct messages pysiaalarm decoded, over its restarts
    warm = 20
    total = warm + presses + outages
    try:
        rx.start()
        broker.start()
        desk.start()
        box = start_box(workdir, SITES[0], broker.port, rx.port)
        boxes.append(box)
        base = start_box(workdir, SITES[1], broker.port, None)
        boxes.append(base)
        dc09 = box.daemon.dc09
        assert dc09 is not None
        acks = AckClock(dc09.queue)
        pin, base_pin = box.pins.pin(BUTTON_PIN), base.pins.pin(BUTTON_PIN)
        for i in range(1, total + 1):
            outage = i > warm + presses
            if outage:  # the receiver away: the press waits on DC-09, never on MQTT
                port = rx.port
                decoded += len(rx.messages())
                rx.stop()
            t0 = time.perf_counter()
            pin.drive_low()
            t_mqtt = desk.wait(SITES[0], i, f"press {i}") - t0
            if outage:
                times["outage_mqtt"].append(t_mqtt)
                wait_for(
                    lambda: dc09.transmitter.status().path_ok is False,
                    60,
                    "the DC-09 path seen down",
                    poll_s=0.005,
                )
                returned = time.perf_counter()
                rx = SiaReceiver(Transport.TCP, [SIAAccount("1234", None)], port).start()
                recovery_s.append(acks.wait(i, f"press {i} after the outage", 60) - returned)
            else:
                t_dc09 = acks.wait(i, f"press {i}") - t0
                if i > warm:
                    times["mqtt"].append(t_mqtt)
                    times["dc09"].append(t_dc09)
            pin.drive_high()
            settle(box, SITES[0])
            if i <= warm + presses:  # the baseline, press by press: the same noise
                t0 = time.perf_counter()
                base_pin.drive_low()
                t_only = desk.wait(SITES[1], i, f"baseline press {i}") - t0
                if i > warm:
                    times["mqtt_only"].append(t_only)
                base_pin.drive_high()
                settle(base, SITES[1])
        decoded += len(rx.messages())
    finally:
        for b in boxes:
            b.stop(check=False)
        desk.stop()
        rx.stop()
        broker.kill()
    gave_up = [f"{b.daemon.cfg.site.id}: {b.gave_up}" for b in boxes if b.gave_up]
    if gave_up:
        raise AssertionError(f"the agent's supervisor gave up ({'; '.join(gave_up)})")
    return {
        "presses": presses,
        **{k: describe(v) for k, v in times.items()},
        "recovery_s": recovery_s,
        "delivered_both": len(desk.arrivals[SITES[0]]) == len(acks.times) == decoded == total,
        "machine": machine_context(workdir),
    }


def main() -> int:
    ap = bench.arguments(__doc__)
    ap.add_argument("--part", choices=("agent", "transmitter", "both"), default="both")
    ap.add_argument("--presses", type=int, default=500, help="through the agent, after 20 warm-up")
    ap.add_argument("--outages", type=int, default=5, help="receiver away, then back")
    ap.add_argument("--events", type=int, default=500, help="per transmitter-alone case")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("pysiaalarm", "agent"):  # the outages are on purpose
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    def measure(workdir: Path) -> dict[str, Any]:
        agent = (
            None if args.part == "transmitter" else run_agent(args.presses, args.outages, workdir)
        )
        cases = [] if args.part == "agent" else [(t, k) for t in Transport for k in (False, True)]
        return {"agent": agent, "transmitter": [run_case(t, k, args.events) for t, k in cases]}

    return bench.run("dc09", args, measure, partial(markdown, args.events))


def markdown(events: int, result: dict[str, Any]) -> str:
    agent, rows, lines = result["agent"], result["transmitter"], []
    if agent is not None:
        lines += [
            f"Through the agent: {agent['presses']} presses (loopback, TCP, no AES, storage "
            f"{agent['machine']['storage_fs']}, load {agent['machine']['loadavg'][0]:.2f}, "
            f"agent {agent['machine']['agent_code']})",
            "",
            "| path | p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|",
        ]
        for name, key in (
            ("press -> DC-09 ACK", "dc09"),
            ("press -> MQTT centre", "mqtt"),
            ("press -> MQTT centre, DC-09 receiver away", "outage_mqtt"),
            ("baseline: the same agent without DC-09, press -> MQTT centre", "mqtt_only"),
        ):
            d = agent[key]
            lines.append(f"| {name} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {d['max_ms']:.2f} |")
        lines += [
            "",
            f"Both paths delivered every press: {agent['delivered_both']}. Receiver back -> "
            "queued event ACK: " + ", ".join(f"{s:.2f}" for s in agent["recovery_s"]) + " s",
            "",
        ]
    if rows:
        lines += [
            f"The transmitter alone: event -> ACK, {events} events per case (loopback)",
            "",
            "| case | ours p50 ms | ours p99 ms | bare socket p50 ms | bare socket p99 ms "
            "| receiver back -> queued event ACK s |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['case']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['base_p50_ms']:.2f} | {r['base_p99_ms']:.2f} | {r['recovery_s']:.2f} |"
            for r in rows
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
