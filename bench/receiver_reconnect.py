"""The centre's receiver across broker restarts: how soon it is back, and what a press costs.

    .venv/bin/python -m bench.receiver_reconnect              # 10 SIGKILLs in about 30 s (~45 s)
    .venv/bin/python -m bench.receiver_reconnect --kills 30 --json
    .venv/bin/python -m bench.receiver_reconnect --down 1 3   # longer outages: paho's delay doubles

A simulated site (agent/testing): its private Mosquitto (persistence on), the receiver as the
centre runs it (``edge-agent central`` as a process, its ledger on disk), the simulated school as
systemd runs it (``edge-agent run``). The broker is SIGKILLed ``--kills`` times: up for 1 to 2.5 s
after the receiver is back, down for 0.2 to 1 s (``--down``; random, seeded), as in the issue's
run that found the receiver away for 63 s. Throughout, a press every 0.5 s through the agent's
control socket.

Measured, all in wall-clock time on one host:

    broker up -> subscribed   from the moment the restarted broker accepted a TCP connection
                              (polled every 20 ms, so up to 20 ms late) to the time the receiver
                              recorded each of its links subscribed again (its ledger, as
                              ``edge-agent central status`` shows it);
    press -> stored           from just before the press to the centre's ``received_at`` of that
                              alarm, split by whether the broker was up or down at the press;
                              for the latter also from the broker's return;
    baseline                  a client as the receiver was before (paho's ``loop_start`` and its
                              own reconnect: 1 s doubling to 120 s), subscribed to the same
                              alarms in the same run.

Bounded: each wait has a timeout (exit 1 naming the step); the broker and both processes are
stopped in any case. Storage on a real disk, as in bench/alarm_latency.py.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from agent.clock import parse_rfc3339
from agent.testing import bench, wait_for
from agent.testing.central import CentralProcess
from agent.testing.mqtt import MqttClient
from agent.testing.site import AgentProcess, Site
from agent.testing.stats import describe, machine_context, table

WAIT_S = 30.0
BUTTONS = ("entrance", "gym", "office", "corridor")


def run(kills: int, seed: int, workdir: Path, down: tuple[float, float]) -> dict[str, Any]:
    rng = random.Random(seed)
    site = Site(workdir, agent=None, centre=False)
    presses: list[tuple[str, float, bool]] = []  # event id, pressed at, broker up
    up, stop = threading.Event(), threading.Event()
    wall = time.time() - time.monotonic()  # the baseline's SUBACK times are monotonic

    def press_loop(box: AgentProcess) -> None:
        i = 0
        while not stop.wait(0.5):
            at, broker_up = time.time(), up.is_set()
            events = box.press(BUTTONS[i % len(BUTTONS)])
            presses.extend((e["event_id"], at, broker_up) for e in events)
            i += 1

    with site:
        central = CentralProcess(site.broker.url, workdir / "centre", "bench-rx").start()
        baseline = MqttClient(
            site.broker.port,
            ["schools/+/alarm"],
            persistent=True,
            client_id="bench-paho-baseline",
            keepalive=10,
            reconnect="paho",
        )
        try:
            baseline.connect()
            wait_for(lambda: central.subscribed_since(0), WAIT_S, "the receiver")
            box = site.start_agent(process=True)
            assert isinstance(box, AgentProcess)
            up.set()
            presser = threading.Thread(target=press_loop, args=(box,), daemon=True)
            presser.start()
            restarts: list[dict[str, float]] = []
            for _ in range(kills):
                time.sleep(rng.uniform(1.0, 2.5))
                up.clear()
                site.broker.kill()
                time.sleep(rng.uniform(*down))
                before = time.time()
                site.broker.start()  # returns once the port accepts a connection
                at_up = time.time()
                links = wait_for(
                    partial(central.subscribed_since, before),
                    WAIT_S,
                    "the receiver's links to subscribe again",
                )
                up.set()
                restarts.append(
                    {"alarms_s": min(links) - at_up, "video_s": max(links) - at_up, "at_up": at_up}
                )
            stop.set()
            presser.join(10)
            wanted = {e for e, _, _ in presses}

            def stored() -> dict[tuple[str, str], str] | None:
                got: dict[tuple[str, str], str] = central.ledger(lambda led: led.received())
                return got if {e for _s, e in got} >= wanted else None

            received = wait_for(stored, WAIT_S, "every press stored")
        finally:
            stop.set()
            baseline.close()
            central.stop()
    by_event = {e: parse_rfc3339(at) or 0.0 for (_s, e), at in received.items()}
    suback = [t + wall for t in baseline.subscribed_at]
    gaps = [min((t for t in suback if t >= r["at_up"]), default=None) for r in restarts]
    back_s = [g - r["at_up"] for g, r in zip(gaps, restarts, strict=True) if g is not None]
    return {
        "kills": kills,
        "down_s": list(down),
        "presses": len(presses),
        "lost": len(wanted - set(by_event)),
        "baseline_came_back": len(back_s),
        "figures": {
            "broker up -> receiver's alarm link subscribed": describe(
                [r["alarms_s"] for r in restarts]
            ),
            "broker up -> both links subscribed": describe([r["video_s"] for r in restarts]),
            "baseline: paho's own reconnect (the receiver before)": describe(back_s)
            if back_s
            else None,
            "press (broker up) -> stored at the centre": describe(
                [by_event[e] - t for e, t, u in presses if u]
            ),
            "press (broker down) -> stored at the centre": describe(
                [by_event[e] - t for e, t, u in presses if not u]
            ),
            "  of which: broker up -> that press stored": describe(
                [
                    by_event[e] - min((r["at_up"] for r in restarts if r["at_up"] > t), default=t)
                    for e, t, u in presses
                    if not u
                ]
            ),
        },
    }


def markdown(report: dict[str, Any]) -> str:
    result, ctx = report["result"], report["machine"]
    rows = {k: f for k, f in result["figures"].items() if f}
    return "\n".join(
        [
            *table(rows, head="measure", mean=False, digits=0),
            "",
            f"{result['kills']} broker SIGKILLs, each down {result['down_s'][0]:g} to "
            f"{result['down_s'][1]:g} s; {result['presses']} presses, {result['lost']} lost. The "
            f"paho baseline came back within the run after {result['baseline_came_back']} of "
            f"{result['kills']} restarts.",
            f"Machine: {ctx['cpus']} CPUs, load {ctx['loadavg'][0]:.1f}; {ctx['broker']}; "
            f"storage {ctx['storage_fs']}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = bench.arguments(__doc__)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--down", type=float, nargs=2, default=(0.2, 1.0), help="min, max s down")
    args = ap.parse_args(argv)

    def measure(workdir: Path) -> dict[str, Any]:
        result = run(args.kills, args.seed, workdir, (args.down[0], args.down[1]))
        return {"result": result, "machine": machine_context(workdir)}

    return bench.run("receiver_reconnect", args, measure, markdown)


if __name__ == "__main__":
    sys.exit(main())
