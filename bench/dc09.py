"""DC-09 transmitter alone: event -> ACK from pysiaalarm, against a bare socket in the same run.

    .venv/bin/python -m bench.dc09                   # 500 events per case, markdown (~20 s)
    .venv/bin/python -m bench.dc09 --events 100 --json

Phase 1 of issue 13: the transmitter without the agent (phase 2 adds press -> ACK beside the
MQTT path's press -> receipt). Per case (TCP/UDP, plain/AES-128), on one pysiaalarm receiver
on a free loopback port:

    transmitter  t0 = perf_counter(); MemoryQueue.put(event); Transmitter.wake()  ->  t1 when
                 the transmitter calls queue.acked() for it. Covers the wake-up, encoding,
                 transliteration, AES, the socket round trip and pysiaalarm's parsing.
    baseline     t0; a prebuilt frame sent on a plain socket  ->  t1 when the ACK's CR is read.
                 The floor: pysiaalarm's own time plus loopback.

The two are interleaved event by event so both see the same noise; percentiles are
nearest-rank. Then the outage: the receiver is stopped, an event is queued, the path is seen
down, the receiver restarts on the same port, and we time from its return to the queued event's
ACK (bounded by the pause after failed rounds, ``retry_max_s``, default 10 s).

Bounded: every wait times out (exit 1 naming the step); receivers are stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time
from typing import Any

from pysiaalarm import SIAAccount
from pysiaalarm.sync.client import SIAClient
from pysiaalarm.utils import CommunicationsProtocol

from agent.delivery.dc09.events import Event, EventKind, MessageFormat, encode
from agent.delivery.dc09.frame import Address, build
from agent.delivery.dc09.queue import MemoryQueue
from agent.delivery.dc09.settings import Receiver, Settings, Transport
from agent.delivery.dc09.transmitter import Transmitter
from agent.supervision import Supervisor
from agent.testing.stats import percentile

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


def receiver(transport: Transport, key: bool, port: int = 0) -> SIAClient:
    proto = CommunicationsProtocol.TCP if transport is Transport.TCP else CommunicationsProtocol.UDP
    client = SIAClient("127.0.0.1", port, [SIAAccount("1234", KEY_TEXT if key else None)],
                       lambda _e: None, protocol=proto)
    client.start()
    return client


def port_of(client: SIAClient) -> int:
    return int(client.sia_server.server_address[1])


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
    r = Receiver("127.0.0.1", port_of(rx), transport, "1234", "1", "2",
                 KEY_TEXT.encode() if key else None)
    tx = Transmitter(Settings((r,), ack_timeout_s=2.0, test_report_s=None), queue)
    kind = socket.SOCK_STREAM if transport is Transport.TCP else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(5)
    ours: list[float] = []
    base: list[float] = []
    try:
        sock.connect(("127.0.0.1", port_of(rx)))
        tx.start(sup)
        event = Event(EventKind.PANIC, 7, "Главный вход")
        msg = encode(event, MessageFormat.SIA_DCS, "1234")
        for i in range(n + 20):  # 20 warm-up
            frame = build(msg.token, i % 9999 + 1, Address("1234", "1", "2"), msg.data,
                          extended=msg.extended, sent_at=time.time(),
                          key=KEY_TEXT.encode() if key else None)
            b = baseline(sock, frame, transport)
            t0 = time.perf_counter()
            event_id = queue.put(event)
            tx.wake()
            t1 = queue.wait(event_id, 5, f"event {i} acknowledged")
            if i >= 20:
                base.append(b)
                ours.append(t1 - t0)
        # The outage: stopped, an event queued, the path down, back on the same port.
        port = port_of(rx)
        rx.stop()
        rx = None  # type: ignore[assignment]
        event_id = queue.put(event)
        tx.wake()
        deadline = time.monotonic() + 60
        while tx.status().path_ok is not False:
            if time.monotonic() > deadline:
                sys.exit("timed out: the path seen down")
            time.sleep(0.01)
        returned = time.perf_counter()
        rx = receiver(transport, key, port)
        recovery = queue.wait(event_id, 60, "the queued event after the outage") - returned
    finally:
        tx.stop()
        sock.close()
        if rx is not None:
            rx.stop()
    ours.sort()
    base.sort()
    return {"case": f"{transport}{' AES-128' if key else ''}", "events": n,
            "p50_ms": percentile(ours, 50) * 1e3, "p99_ms": percentile(ours, 99) * 1e3,
            "base_p50_ms": percentile(base, 50) * 1e3, "base_p99_ms": percentile(base, 99) * 1e3,
            "recovery_s": recovery}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pysiaalarm").setLevel(logging.CRITICAL)
    rows = [run_case(t, k, args.events) for t in Transport for k in (False, True)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"DC-09 event -> ACK from pysiaalarm, {args.events} events per case (loopback)\n")
    print("| case | ours p50 ms | ours p99 ms | bare socket p50 ms | bare socket p99 ms "
          "| receiver back -> queued event ACK s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['base_p50_ms']:.2f} "
              f"| {r['base_p99_ms']:.2f} | {r['recovery_s']:.2f} |")


if __name__ == "__main__":
    main()
