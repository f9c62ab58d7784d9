"""The centre's receiver across broker restarts: how soon it is back, and what a press costs.

    python3 bench/receiver_reconnect.py              # 10 SIGKILLs in about 30 s (~45 s)
    python3 bench/receiver_reconnect.py --kills 30 --json
    python3 bench/receiver_reconnect.py --down 1 3   # longer outages: paho's delay doubles

One private Mosquitto (the real broker, persistence on), the receiver as the centre runs it
(``edge-agent central`` as a process, its ledger on disk), the simulated school as the agent
runs (``edge-agent run`` as a process). The broker is SIGKILLed ``--kills`` times: up for 1 to
2.5 s after the receiver is back, down for 0.2 to 1 s (``--down``; random, seeded), as in the
issue's run that found the receiver away for 63 s. Throughout, a press every 0.5 s through the
agent's control socket.

Measured, all in wall-clock time on one host:

    broker up -> subscribed   from the moment the restarted broker accepted a TCP connection
                              (polled every 20 ms, so up to 20 ms late) to the time the receiver
                              recorded each of its links subscribed again (its ledger, as
                              ``edge-agent central status`` shows it);
    press -> stored           from just before the control-socket press to the centre's
                              ``received_at`` of that alarm, split by whether the broker was up
                              or down at the press; for the latter also from the broker's
                              return (the box's and the receiver's reconnects, and the store);
    baseline                  a bare paho client as the receiver was before (``loop_start``,
                              ``connect_async``, paho's own reconnect: 1 s doubling to 120 s),
                              subscribed to the same alarms in the same run.

Bounded: each wait has a timeout (exit 1 naming the step); the broker and both processes are
stopped in ``finally``. Run from the repository root; storage on a real disk, as in
bench/alarm_latency.py (the shared helpers are agent/testing/stats.py).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "bench"):  # the agent from this checkout; the shared bench helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from agent.box import control  # noqa: E402
from agent.centre.ledger import Ledger  # noqa: E402
from agent.clock import parse_rfc3339  # noqa: E402
from agent.config import default_config_text  # noqa: E402
from agent.testing.broker import Mosquitto  # noqa: E402
from agent.testing.stats import default_storage_parent, describe, machine_context  # noqa: E402

WAIT_S = 30.0


class BenchError(RuntimeError):
    """The bench could not complete: says which step and what to check."""


def wait(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def read_ledger(store: Path, read: Callable[[Ledger], Any]) -> Any:
    ledger = Ledger.open(store)
    try:
        return read(ledger)
    finally:
        ledger.close()


class PahoBaseline:
    """The receiver's connection as it was: paho's loop_start and automatic reconnect."""

    def __init__(self, port: int) -> None:
        self.subscribed_at: list[float] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho-baseline",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe("schools/+/alarm", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed_at.append(time.time())
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", port, keepalive=10, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(kills: int, seed: int, storage: Path, down: tuple[float, float]) -> dict[str, Any]:
    rng = random.Random(seed)
    broker = Mosquitto(storage / "broker", extra_conf="set_tcp_nodelay true")
    broker.start()
    store, state = storage / "centre", storage / "state"
    data = yaml.safe_load(default_config_text())
    data["mqtt"].update({"port": broker.port, "keepalive_s": 5})
    data["storage"]["path"] = str(state)
    data["cameras"] = []
    for button in data["buttons"]:
        button.pop("cameras", None)
    (storage / "agent.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    log = open(storage / "processes.log", "ab")  # noqa: SIM115  # closed in finally
    procs = [subprocess.Popen([sys.executable, "-m", "agent.cli", *args], cwd=REPO, stdout=log,
                              stderr=log) for args in (
        ["central", "--broker", broker.url, "--store", str(store), "--client-id", "bench-rx"],
        ["run", "-c", str(storage / "agent.yaml")])]
    baseline = PahoBaseline(broker.port)
    presses: list[tuple[str, float, bool]] = []  # event id, pressed at, broker up
    up = threading.Event()
    stop = threading.Event()

    def press_loop() -> None:
        sock = control.socket_path(state)
        buttons = [b["id"] for b in data["buttons"]]
        i = 0
        while not stop.wait(0.5):
            button = buttons[i % len(buttons)]
            i += 1
            at, broker_up = time.time(), up.is_set()
            reply = control.call(sock, {"cmd": "simulate", "action": "press", "button": button})
            control.call(sock, {"cmd": "simulate", "action": "release", "button": button})
            presses.extend((e["event_id"], at, broker_up) for e in reply.get("events", []) if e)

    try:
        wait(lambda: (store / "centre.db").exists() and all(
            s.up for s in read_ledger(store, lambda led: led.links())), "the receiver")
        wait(lambda: control.socket_path(state).exists(), "the agent's control socket")
        up.set()
        presser = threading.Thread(target=press_loop, name="presser", daemon=True)
        presser.start()
        restarts: list[dict[str, float]] = []
        for _ in range(kills):
            time.sleep(rng.uniform(1.0, 2.5))
            up.clear()
            broker.kill()
            time.sleep(rng.uniform(*down))
            before = time.time()
            broker.start()  # returns once the port accepts a connection
            at_up = time.time()
            seen = len(baseline.subscribed_at)

            def back(since: float = before) -> list[float] | None:
                states = read_ledger(store, lambda led: led.links())
                times = [parse_rfc3339(s.regained_at) for s in states]
                ok = [t for t in times if t is not None and t >= since]
                return ok if len(ok) == 2 else None

            links = wait(back, "the receiver's links to subscribe again")
            up.set()
            restarts.append({"alarms_s": min(links) - at_up, "video_s": max(links) - at_up,
                             "baseline_seen": float(len(baseline.subscribed_at) > seen),
                             "at_up": at_up})
        stop.set()
        presser.join(10)
        wanted = {e for e, _, _ in presses}
        received = wait(lambda: (r := read_ledger(store, lambda led: led.received())) and {
            e for _s, e in r} >= wanted and r, "every press stored")
        by_event = {e: parse_rfc3339(at) or 0.0 for (_s, e), at in received.items()}
        baseline_gaps = []
        for r in restarts:  # the baseline's first subscription after each restart, if any
            after = [t for t in baseline.subscribed_at if t >= r["at_up"]]
            baseline_gaps.append(after[0] - r["at_up"] if after else float("nan"))
        return {
            "kills": kills,
            "down_s": list(down),
            "broker_up_to_alarms_link": describe([r["alarms_s"] for r in restarts]),
            "broker_up_to_both_links": describe([r["video_s"] for r in restarts]),
            "baseline_paho_auto_reconnect": {
                "came_back": sum(g == g for g in baseline_gaps),
                "of": len(restarts),
                **(describe([g for g in baseline_gaps if g == g]) if any(
                    g == g for g in baseline_gaps) else {})},
            "press_to_stored_broker_up": describe([by_event[e] - t for e, t, u in presses if u]),
            "press_to_stored_broker_down": describe(
                [by_event[e] - t for e, t, u in presses if not u]),
            "broker_up_to_stored": describe([by_event[e] - min(
                (r["at_up"] for r in restarts if r["at_up"] > t), default=t)
                for e, t, u in presses if not u]),
            "presses": len(presses),
            "lost": len(wanted - set(by_event)),
        }
    finally:
        stop.set()
        baseline.stop()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        broker.kill()


def markdown(result: dict[str, Any], context: dict[str, Any]) -> str:
    rows = [("broker up -> receiver's alarm link subscribed", "broker_up_to_alarms_link"),
            ("broker up -> both links subscribed", "broker_up_to_both_links"),
            ("baseline: paho's own reconnect (the receiver before)",
             "baseline_paho_auto_reconnect"),
            ("press (broker up) -> stored at the centre", "press_to_stored_broker_up"),
            ("press (broker down) -> stored at the centre", "press_to_stored_broker_down"),
            ("  of which: broker up -> that press stored", "broker_up_to_stored")]
    lines = ["| measure | n | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for label, key in rows:
        d = result[key]
        if "p50_ms" not in d:
            lines.append(f"| {label} | 0 | - | - | - |")
            continue
        lines.append(f"| {label} | {d['n']} | {d['p50_ms']:.0f} | {d['p99_ms']:.0f} | "
                     f"{d['max_ms']:.0f} |")
    base = result["baseline_paho_auto_reconnect"]
    lines += ["", f"{result['kills']} broker SIGKILLs, each down {result['down_s'][0]:g} to "
              f"{result['down_s'][1]:g} s; {result['presses']} presses, "
              f"{result['lost']} lost. The paho baseline came back within the run after "
              f"{base['came_back']} of {base['of']} restarts.",
              f"Machine: {context['cpus']} CPUs, load {context['loadavg'][0]:.1f}; "
              f"{context['broker']}; storage {context['storage_fs']}."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--down", type=float, nargs=2, default=(0.2, 1.0), metavar=("MIN", "MAX"),
                        help="seconds the broker stays down (default 0.2 1.0)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reconnect-", dir=default_storage_parent()) as tmp:
        try:
            result = run(args.kills, args.seed, Path(tmp), (args.down[0], args.down[1]))
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        context = machine_context(Path(tmp))
    print(json.dumps({"result": result, "machine": context}, indent=2) if args.json
          else markdown(result, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
