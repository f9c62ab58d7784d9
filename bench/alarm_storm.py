"""Alarm storm at the centre: 1,000 alarms from 200 schools published at once, to the last
receipt; the receiver storing them one fsync at a time (as before group commit) against group
commit (one fsync for the alarms that arrived together, before any of their receipts).

    .venv/bin/python -m bench.alarm_storm              # 1,000 alarms, 200 schools, 5 runs each
    .venv/bin/python -m bench.alarm_storm --json
    .venv/bin/python -m bench.alarm_storm --postgres   # also on PostgreSQL, one and two receivers
    .venv/bin/python -m bench.alarm_storm --alarms 200 --sites 40 --runs 1   # a quick look

One machine, loopback: a private Mosquitto and the real receiver (agent/centre/service.py) in
another process, on a ledger on a real disk (the fsync is the point). The "schools" publish valid
alarms of 200 sites (QoS 1) through ``--connections`` MQTT connections as fast as they can, and
``mosquitto_sub`` reads the receipts: the time to the last receipt is what the last school
waits to know its alarm is stored. The receiver is ``edge-agent central`` in its own process
(``--group-commit 1`` stores one alarm per transaction, as before). Each case runs ``--runs``
times on a fresh store; the median run is reported (of an even number, the lower middle one).
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from agent import logs
from agent.clock import parse_rfc3339, rfc3339
from agent.delivery.protocol import Alarm
from agent.testing import bench, wait_for
from agent.testing.broker import Mosquitto, die_with_parent
from agent.testing.central import CentralProcess
from agent.testing.mqtt import MqttClient, Receipts
from agent.testing.postgres import Postgres
from agent.testing.stats import REPO, machine_context, machine_line, median_run

# name: (--group-commit, on PostgreSQL, receivers)
CASES = {
    "SQLite, one fsync per alarm": (1, False, 1),
    "SQLite, group commit": (256, False, 1),
    "PostgreSQL, one commit per alarm": (1, True, 1),
    "PostgreSQL, group commit": (256, True, 1),
    "PostgreSQL, group commit, two receivers": (256, True, 2),
}


def publish(port: int, connections: int, alarms: int, sites: int) -> None:
    """The schools (``--publish``, a child process, so their threads share no interpreter
    with the measuring client): ``connections`` MQTT connections, each with its own in-flight
    window at the broker as 200 boxes would have; on a line on stdin they publish every alarm
    at once and print how long that took and when they started (the wall clock, which the
    receipts' reader and the receiver's ledger use too: one machine)."""
    clients = [MqttClient(port).connect() for _ in range(connections)]
    payloads = []
    for i in range(alarms):
        site = f"school-{i % sites:03d}"
        payloads.append(
            (
                site,
                Alarm(
                    str(uuid.uuid4()),
                    i // sites + 1,
                    site,
                    "entrance",
                    "Главный вход",
                    "panic",
                    rfc3339(time.time()),
                    True,
                ).to_json(),
            )
        )
    print("ready", flush=True)
    sys.stdin.readline()
    t0, wall = time.monotonic(), time.time()
    sent = [
        clients[i % connections].send(f"schools/{site}/alarm", payload)
        for i, (site, payload) in enumerate(payloads)
    ]
    for i, mid in enumerate(sent):
        clients[i % connections].wait_ack(mid, 60)
    print(time.monotonic() - t0, wall, flush=True)
    for client in clients:
        client.close()


def _last_stored(store: Path, ledger_url: str | None) -> float:
    """When the receivers stored the last alarm (the ledger's received_at, wall clock, ms)."""
    if ledger_url is not None:
        import psycopg

        with psycopg.connect(ledger_url) as pg:
            row = pg.execute("SELECT MAX(received_at) FROM alarms").fetchone()
        last = row[0] if row else None
    else:
        conn = sqlite3.connect(store / "centre-1" / "centre.db")
        try:
            (last,) = conn.execute("SELECT MAX(received_at) FROM alarms").fetchone()
        finally:
            conn.close()
    stored = parse_rfc3339(last)
    assert stored is not None
    return stored


def storm(
    broker: Mosquitto,
    store: Path,
    args: argparse.Namespace,
    group_max: int,
    ledger_url: str | None = None,
    receivers: int = 1,
) -> dict[str, float]:
    """One storm against fresh receiver processes (``edge-agent central``), as in production;
    several only on a shared PostgreSQL ledger. An alarm counts as confirmed at its first
    receipt, from whichever receiver."""
    names = [f"storm-{store.name}-{n}" for n in range(1, receivers + 1)]
    # The receipts are read by mosquitto_sub (Receipts: C, the wall-clock time of each), at
    # QoS 0: a Python client's own loop was the slowest part here (one select turn per message),
    # and one QoS 1 reader has one in-flight window of 20 at the broker, which 200 boxes do not
    # share: it measured the reader (2 to 6 s more) instead of the receiver.
    receipts = Receipts(broker.port, qos=0).start()
    confirmed = receipts.confirmed
    options: tuple[str, ...] = ("--min-free-gb", "0", "--group-commit", str(group_max))
    options += ("--ledger", ledger_url) if ledger_url else ()
    started = [
        CentralProcess(broker.url, store / f"centre-{n}", name, *options).start()
        for n, name in enumerate(names, start=1)
    ]
    schools = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.alarm_storm",
            "--publish",
            str(broker.port),
            str(args.connections),
            str(args.alarms),
            str(args.sites),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,
    )
    assert schools.stdin is not None and schools.stdout is not None
    try:
        wait_for(lambda: set(names) <= receipts.online, 20, "the receivers to come online")
        if schools.stdout.readline().strip() != "ready":
            raise AssertionError("the schools did not connect")
        time.sleep(1.0)  # the receiver's video link too, and the machine quiet again
        schools.stdin.write("go\n")
        schools.stdin.flush()
        published, wall = (float(x) for x in schools.stdout.readline().split())
        wait_for(lambda: len(confirmed) >= args.alarms, 60, "every receipt", poll_s=0.005)
        last = max(confirmed.values()) - wall
        return {
            "published_s": published,
            "last_stored_s": _last_stored(store, ledger_url) - wall,
            "last_receipt_s": last,
            "alarms_per_s": args.alarms / last,
        }
    finally:
        try:
            schools.wait(30)
        except subprocess.TimeoutExpired:  # a step failed before "go": it still waits for it
            schools.kill()
            schools.wait()
        receipts.stop()
        for receiver in started:
            receiver.stop(15)


def main() -> int:
    ap = bench.arguments(__doc__)
    ap.add_argument("--alarms", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50, help="the schools' MQTT connections")
    ap.add_argument("--broker-inflight", type=int, default=20, help="max_inflight_messages")
    ap.add_argument("--postgres", action="store_true", help="also on PostgreSQL: 1, 2 receivers")
    ap.add_argument("--publish", nargs=4, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publish:
        publish(*args.publish)
        return 0
    logs.setup("error")
    return bench.run("alarm_storm", args, partial(cases, args), partial(markdown, args))


def cases(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Each case's median run, and the machine."""
    results: dict[str, Any] = {}
    broker = Mosquitto(
        work / "broker",
        extra_conf=f"max_inflight_messages {args.broker_inflight}\n",
        save_every_change=False,  # as a production broker (agent/testing/broker.py)
    )
    broker.start()
    cluster = Postgres().start() if args.postgres else None
    try:
        for case, (group_max, pg, receivers) in CASES.items():
            if pg and cluster is None:
                continue
            runs = []
            for run in range(args.runs):
                url = cluster.create(f"storm{len(results)}x{run}") if cluster and pg else None
                store = work / f"{len(results)}-{run}"
                runs.append(storm(broker, store, args, group_max, url, receivers))
            results[case] = median_run(runs, "last_receipt_s")
        results["machine"] = machine_context(work)
    finally:
        if cluster is not None:
            cluster.stop()
        broker.kill()
    return results


def markdown(args: argparse.Namespace, results: dict[str, Any]) -> str:
    lines = [
        f"{args.alarms} alarms from {args.sites} schools at once, broker "
        f"max_inflight_messages {args.broker_inflight}, median of {args.runs} runs",
        "",
        "| receiver | published in | last stored | last receipt | alarms/s to the last "
        "receipt | last receipt, each run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name in (case for case in CASES if case in results):
        r = results[name]
        lines.append(
            f"| {name} | {r['published_s'] * 1e3:.0f} ms | {r['last_stored_s'] * 1e3:.0f} ms "
            f"| {r['last_receipt_s'] * 1e3:.0f} ms | {r['alarms_per_s']:.0f} | "
            f"{', '.join(f'{x:.2f}' for x in r['runs_last_receipt_s'])} |"
        )
    return "\n".join([*lines, "", machine_line(results["machine"])])


if __name__ == "__main__":
    sys.exit(main())
