"""Crash-only threads: from a crash in a core thread to the next alarm stored at the centre.

    .venv/bin/python -m bench.thread_crash                 # 120 samples per thread (~4 min)
    .venv/bin/python -m bench.thread_crash --samples 20 --json

Per sample, on a simulated site (agent/testing: a private Mosquitto, the centre's real
receiver, the real Daemon in this process on mock GPIO, one tiny camera for the clips thread):

    crash      the supervisor's test seam makes thread T crash at its next heartbeat
               (Supervisor.inject returns once it has been restarted); a button is pressed
               ->  t1 when the receiver stores the alarm (its on_alarm). Reported from t0 = the
               crash itself (Worker.last_crash_at), so the restart and, for the uplink, the new
               connection are inside the figure.
    baseline   the same press with no crash, interleaved sample by sample, so both see the
               same noise. The report gives the ratio.

The restart budget is lifted for the run (max_crashes=10**6): the bench measures the restart,
not the budget (a spent budget ends the process; tests/fault covers it). The ``supervisor`` row
crashes the main thread's turn (at its next turn, up to 1 s after the request; t0 is still the
crash). Bounded: every wait times out (exit 1).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.testing.site import InProcessAgent, Site, agent_logs_to
from agent.testing.stats import describe, machine_context, machine_line, table

THREADS = ("buttons", "uplink", "control", "clips", "supervisor")
WAIT_S = 10.0
CAMERA = {
    "id": "hall-cam",
    "source": "synthetic:hall",
    "size": "160x90",
    "fps": 5,
    "segment_s": 1,
    "pre_alarm_s": 2,
    "post_alarm_s": 1,
}


def run(samples: int, workdir: Path) -> dict[str, list[float]]:
    stored: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
    out: dict[str, list[float]] = {name: [] for name in ("baseline", *THREADS)}
    with Site(
        workdir,
        cameras=[CAMERA],
        max_crashes=10**6,
        on_alarm=lambda a: stored.put((a["event_id"], time.monotonic())),
    ) as site:
        box = site.agent
        assert isinstance(box, InProcessAgent)
        supervisor = box.daemon.supervisor

        def press(t0: float | None = None) -> float:
            t0 = time.monotonic() if t0 is None else t0
            [event] = box.press("entrance")
            while (got := stored.get(timeout=WAIT_S))[0] != event["event_id"]:
                pass
            box.release("entrance")
            return got[1] - t0

        for _ in range(5):
            press()  # warm-up
        for _ in range(samples):
            for name in THREADS:
                out["baseline"].append(press())
                supervisor.inject(name)
                out[name].append(press(supervisor.worker(name).last_crash_at))
        crashes = supervisor.status()
        if any(crashes.get(name) != samples for name in THREADS):
            raise AssertionError(f"crash counts are not {samples} each: {crashes}")
    return out


def markdown(figures: dict[str, dict[str, float]], ctx: dict[str, Any]) -> str:
    base = figures["baseline"]["p50_ms"]
    rows = table(
        {name: f for name, f in figures.items()}, head="thread crashed", mean=False, digits=1
    )
    rows[0] += " p50 / baseline p50 |"
    rows[1] += "---:|"
    rows[2:] = [
        f"{r} {f['p50_ms'] / base:.2f} |" for r, f in zip(rows[2:], figures.values(), strict=True)
    ]
    return "\n".join([*rows, "", machine_line(ctx)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--samples",
        type=int,
        default=120,
        help="crashes per thread (default 120: p99 is then not the maximum)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="thread-crash-") as tmp:
        ctx = machine_context(Path(tmp))
        try:
            with agent_logs_to(Path(tmp) / "agent.log"):
                samples = run(args.samples, Path(tmp))
        except (AssertionError, queue.Empty) as exc:
            print(
                f"thread_crash: {exc or 'an alarm did not reach the centre in time'}",
                file=sys.stderr,
            )
            return 1
    figures = {name: describe(xs) for name, xs in samples.items()}
    print(
        json.dumps({"figures": figures, "context": ctx}, indent=2)
        if args.json
        else markdown(figures, ctx)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
