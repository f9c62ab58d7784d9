"""Crash-only threads: from a crash in a core thread to the next alarm stored at the centre.

    .venv/bin/python bench/thread_crash.py                 # 120 samples per thread (~4 min)
    .venv/bin/python bench/thread_crash.py --samples 20 --json

Per sample, on one private Mosquitto with the real receiver (agent.centre.service.run_receiver) and
the real Daemon in this process (mock GPIO, no cameras but one for the clips thread):

    crash      the supervisor's test seam makes thread T crash at its next heartbeat
               (Supervisor.inject returns once it has been restarted); a button is pressed
               through ButtonBoard.simulate  ->  t1 when the receiver stores the alarm
               (on_alarm). Reported from t0 = the crash itself (Worker.last_crash_at), so
               the restart and, for the uplink, the new connection are inside the figure.
    baseline   the same press with no crash, interleaved sample by sample, so both see the
               same noise. The report gives the ratio.

The restart budget is lifted for the run (one Supervisor with max_crashes=10**6): the bench
measures the restart, not the budget (a budget spent ends the process; tests/fault covers it).
The ``supervisor`` row crashes the main thread's turn (it crashes at its next turn, up to 1 s
after the request; t0 is still the crash). Bounded: every wait times out (exit 1).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from agent.box.daemon import Daemon
from agent.centre.service import run_receiver
from agent.config import default_config_text, load_config
from agent.sdnotify import Notifier
from agent.supervision import Supervisor
from agent.testing.broker import Mosquitto
from agent.testing.stats import describe, machine_context

THREADS = ("buttons", "uplink", "control", "clips", "supervisor")
WAIT_S = 10.0
REARM_S = 0.07  # release_s (50 ms) plus a margin


class BenchError(RuntimeError):
    pass


def _config(workdir: Path, port: int) -> Path:
    data = yaml.safe_load(default_config_text())
    data["mqtt"]["port"] = port
    data["storage"]["path"] = str(workdir / "state")
    data["cameras"] = [{"id": "hall-cam", "source": "synthetic:hall", "size": "160x90",
                        "fps": 5, "segment_s": 1, "pre_alarm_s": 2, "post_alarm_s": 1}]
    for b in data["buttons"]:
        b.pop("cameras", None)
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(samples: int, workdir: Path) -> dict[str, list[float]]:
    broker = Mosquitto(workdir / "broker")
    broker.start()
    stored: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
    stop = threading.Event()
    centre = threading.Thread(target=run_receiver, kwargs={
        "broker": broker.url, "topic_prefix": "schools", "store": workdir / "centre",
        "client_id": "bench-centre", "stop": stop,
        "on_alarm": lambda a: stored.put((a["event_id"], time.monotonic()))}, daemon=True)
    centre.start()
    daemon = Daemon(load_config(_config(workdir, broker.port)), notifier=Notifier(None),
                    supervisor=Supervisor(max_crashes=10**6))
    runner = threading.Thread(target=daemon.supervise, daemon=True)
    out: dict[str, list[float]] = {name: [] for name in ("baseline", *THREADS)}
    try:
        daemon.start()
        runner.start()
        assert daemon.buttons is not None
        buttons = daemon.buttons

        def press(t0: float | None = None) -> float:
            t0 = time.monotonic() if t0 is None else t0
            [event] = buttons.simulate("entrance", True)
            while True:
                try:
                    event_id, t1 = stored.get(timeout=WAIT_S)
                except queue.Empty:
                    raise BenchError("an alarm did not reach the centre in time") from None
                if event_id == event["event_id"]:
                    break
            buttons.simulate("entrance", False)
            time.sleep(REARM_S)
            return t1 - t0

        deadline = time.monotonic() + WAIT_S
        while daemon.uplink is None or daemon.uplink.centre_present is not True:
            if time.monotonic() > deadline:
                raise BenchError("the centre never showed its presence to the agent")
            time.sleep(0.01)
        for _ in range(5):
            press()  # warm-up
        for _ in range(samples):
            for name in THREADS:
                out["baseline"].append(press())
                daemon.supervisor.inject(name)
                out[name].append(press(daemon.supervisor.worker(name).last_crash_at))
        crashes = daemon.supervisor.status()
        if any(crashes.get(name) != samples for name in THREADS):
            raise BenchError(f"crash counts are not {samples} each: {crashes}")
    finally:
        daemon.request_stop()
        runner.join(5)
        daemon.stop()
        stop.set()
        centre.join(5)
        broker.kill()
    return out


def markdown(figures: dict[str, dict[str, float]], ctx: dict[str, Any]) -> str:
    base = figures["baseline"]["p50_ms"]
    lines = ["| thread crashed | n | p50 ms | p99 ms | max ms | p50 / baseline p50 |",
             "|---|---|---|---|---|---|"]
    for name, f in figures.items():
        lines.append(f"| {name} | {f['n']:.0f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | "
                     f"{f['max_ms']:.1f} | {f['p50_ms'] / base:.2f} |")
    lines.append("")
    lines.append(f"Machine: {ctx['cpus']} CPUs, {ctx['cpu_model']}; Python {ctx['python']}; "
                 f"{ctx['broker']}; storage on {ctx['storage_fs']}; agent {ctx['agent_code']}; "
                 f"load {ctx['loadavg'][0]:.2f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=120,
                    help="crashes per thread (default 120: p99 is then not the maximum)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="thread-crash-") as tmp:
        workdir = Path(tmp)
        ctx = machine_context(workdir)
        try:
            samples = run(args.samples, workdir)
        except BenchError as exc:
            print(f"thread_crash: {exc}", file=sys.stderr)
            return 1
    figures = {name: describe(xs) for name, xs in samples.items()}
    print(json.dumps({"figures": figures, "context": ctx}, indent=2) if args.json
          else markdown(figures, ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
