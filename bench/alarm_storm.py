"""Alarm storm at the centre: 1,000 alarms from 200 schools published at once, to the last
receipt; the receiver storing them one fsync at a time (as before group commit) against group
commit (one fsync for the alarms that arrived together, before any of their receipts).

    .venv/bin/python bench/alarm_storm.py              # 1,000 alarms, 200 schools, 5 runs each
    .venv/bin/python bench/alarm_storm.py --json

One machine, loopback: a private Mosquitto and the real receiver (agent/centre/service.py) in
another process, on a ledger on a real disk (the fsync is the point). The "schools" publish valid
alarms of 200 sites (QoS 1) through ``--connections`` MQTT connections as fast as they can, and
``mosquitto_sub`` reads the receipts: the time to the last receipt is what the last school
waits to know its alarm is stored. The receiver is ``edge-agent central`` in its own process
(``--group-commit 1`` stores one alarm per transaction, as before). Each case runs ``--runs``
times on a fresh store; the median run is reported.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import logs
from agent.delivery.protocol import Alarm, rfc3339
from agent.delivery.schema import parse_timestamp
from agent.testing.broker import Mosquitto
from agent.testing.stats import default_storage_parent, machine_context


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/alarm_storm.py: timed out after {timeout} s: {what}")
        time.sleep(0.005)


def publish(port: int, connections: int, alarms: int, sites: int) -> None:
    """The schools (``--publish``, a child process, so their threads share no interpreter
    with the measuring client): ``connections`` MQTT connections, each with its own in-flight
    window at the broker as 200 boxes would have; on a line on stdin they publish every alarm
    at once and print how long that took and when they started (the wall clock, which the
    receipts' reader and the receiver's ledger use too: one machine)."""
    clients = []
    for _ in range(connections):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", port)
        client.loop_start()
        clients.append(client)
    payloads = []
    for i in range(alarms):
        site = f"school-{i % sites:03d}"
        payloads.append((site, Alarm(str(uuid.uuid4()), i // sites + 1, site, "entrance",
                                     "Главный вход", "panic", rfc3339(time.time()),
                                     True).to_json()))
    print("ready", flush=True)
    sys.stdin.readline()
    t0, wall = time.monotonic(), time.time()
    sent = [clients[i % connections].publish(f"schools/{site}/alarm", payload, qos=1)
            for i, (site, payload) in enumerate(payloads)]
    for info in sent:
        info.wait_for_publish(60)
    print(time.monotonic() - t0, wall, flush=True)
    for client in clients:
        client.disconnect()
        client.loop_stop()


def _last_stored(store: Path) -> float:
    """When the receiver stored the last alarm (its ledger's received_at, wall clock, ms)."""
    conn = sqlite3.connect(store / "centre.db")
    try:
        (last,) = conn.execute("SELECT MAX(received_at) FROM alarms").fetchone()
    finally:
        conn.close()
    stored = parse_timestamp(last)
    assert stored is not None
    return stored


def storm(broker: Mosquitto, store: Path, args: argparse.Namespace,
          group_max: int) -> dict[str, float]:
    """One storm against a fresh receiver process (``edge-agent central``), as in production."""
    client_id = f"storm-{store.name}"
    confirmed: dict[str, float] = {}
    present = threading.Event()
    # The receipts are read by mosquitto_sub (C, wall-clock time of each message, %U): a
    # Python client's own loop was the slowest part here (one select turn per message).
    receipts = subprocess.Popen(
        ["mosquitto_sub", "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-t",
         "schools/+/receipt", "-t", "schools/_centre/presence/+", "-F", "%U %t %p"],
        stdout=subprocess.PIPE, text=True)

    def read() -> None:
        assert receipts.stdout is not None
        for line in receipts.stdout:
            at, topic, payload = line.split(" ", 2)
            if topic.endswith(f"/{client_id}"):
                if json.loads(payload).get("state") == "online":
                    present.set()
                continue
            for event in json.loads(payload).get("alarms", []):
                confirmed.setdefault(event, float(at))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    log = open(store.with_suffix(".log"), "w")  # noqa: SIM115 (closed below)
    receiver = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "central", "--broker", broker.url, "--store",
         str(store), "--client-id", client_id, "--min-free-gb", "0",
         "--group-commit", str(group_max)], stdout=subprocess.DEVNULL, stderr=log)
    schools = subprocess.Popen(
        [sys.executable, __file__, "--publish", str(broker.port), str(args.connections),
         str(args.alarms), str(args.sites)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    assert schools.stdin is not None and schools.stdout is not None
    try:
        wait(present.is_set, 15, "the receiver to come online")
        if schools.stdout.readline().strip() != "ready":
            raise SystemExit("bench/alarm_storm.py: the schools did not connect")
        time.sleep(1.0)  # the receiver's video link too, and the machine quiet again
        schools.stdin.write("go\n")
        schools.stdin.flush()
        published, wall = (float(x) for x in schools.stdout.readline().split())
        wait(lambda: len(confirmed) >= args.alarms, 60, "every receipt")
        last = max(confirmed.values()) - wall
        return {"published_s": published, "last_stored_s": _last_stored(store) - wall,
                "last_receipt_s": last, "alarms_per_s": args.alarms / last}
    finally:
        schools.wait(30)
        receipts.terminate()
        receipts.wait(5)
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(15)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50,
                        help="MQTT connections the schools publish through (default 50)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--storage-dir", type=Path, default=None)
    parser.add_argument("--broker-inflight", type=int, default=20,
                        help="Mosquitto's max_inflight_messages (default 20, its own default)")
    parser.add_argument("--publish", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        publish(*args.publish)
        return 0
    logs.setup("error")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-storm-",
                                     dir=args.storage_dir or default_storage_parent()) as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker", extra_conf=f"max_inflight_messages "
                           f"{args.broker_inflight}\n")
        broker.start()
        try:
            for name, group_max in [("one fsync per alarm", 1), ("group commit", 256)]:
                runs = [storm(broker, work / f"{group_max}-{run}", args, group_max)
                        for run in range(args.runs)]
                median = statistics.median(r["last_receipt_s"] for r in runs)
                results[name] = next(r for r in runs if r["last_receipt_s"] == median)
                results[name]["runs_last_receipt_s"] = [r["last_receipt_s"] for r in runs]
            results["machine"] = machine_context(work)
        finally:
            broker.kill()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.alarms} alarms from {args.sites} schools at once, SQLite ledger, broker "
          f"max_inflight_messages {args.broker_inflight}, median of {args.runs} runs\n")
    print("| receiver | published in | last stored | last receipt | alarms/s to the last "
          "receipt | last receipt, each run (s) |")
    print("|---|---|---|---|---|---|")
    for name in ("one fsync per alarm", "group commit"):
        r = results[name]
        print(f"| {name} | {r['published_s'] * 1e3:.0f} ms | {r['last_stored_s'] * 1e3:.0f} ms "
              f"| {r['last_receipt_s'] * 1e3:.0f} ms | {r['alarms_per_s']:.0f} | "
              f"{', '.join(f'{x:.2f}' for x in r['runs_last_receipt_s'])} |")
    m = results["machine"]
    print(f"\n{m['cpus']} CPUs ({m['cpu_model']}), load {m['loadavg']}, {m['storage_fs']} at "
          f"{m['storage_dir']}, code {m['agent_code']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
