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

import queue
import sys
import time
from pathlib import Path
from typing import Any

from agent.testing import SMALL_CAMERA, bench
from agent.testing.site import InProcessAgent, Site
from agent.testing.stats import describe, machine_context, machine_line, table

THREADS = ("buttons", "uplink", "control", "clips", "supervisor")
WAIT_S = 10.0


def run(samples: int, workdir: Path) -> dict[str, list[float]]:
    stored: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
    out: dict[str, list[float]] = {name: [] for name in ("baseline", *THREADS)}
    with Site(
        workdir,
        cameras=[SMALL_CAMERA],
        max_crashes=10**6,
        on_alarm=lambda a: stored.put((a["event_id"], time.monotonic())),
    ) as site:
        box = site.agent
        assert isinstance(box, InProcessAgent)
        supervisor = box.daemon.supervisor

        def press(t0: float | None = None) -> float:
            t0 = time.monotonic() if t0 is None else t0
            [event] = box.press("entrance")
            try:
                while (got := stored.get(timeout=WAIT_S))[0] != event["event_id"]:
                    pass
            except queue.Empty:
                raise AssertionError("an alarm did not reach the centre in time") from None
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


def markdown(result: dict[str, Any]) -> str:
    figures = result["figures"]
    base = figures["baseline"]["p50_ms"]
    rows = table(figures, head="thread crashed", mean=False, digits=1)
    rows[0] += " p50 / baseline p50 |"
    rows[1] += "---:|"
    rows[2:] = [
        f"{r} {f['p50_ms'] / base:.2f} |" for r, f in zip(rows[2:], figures.values(), strict=True)
    ]
    return "\n".join([*rows, "", machine_line(result["context"])])


def main(argv: list[str] | None = None) -> int:
    ap = bench.arguments(__doc__, storage=False)
    ap.add_argument("--samples", type=int, default=120, help="crashes per thread (p99 < max)")
    args = ap.parse_args(argv)

    def measure(workdir: Path) -> dict[str, Any]:
        ctx = machine_context(workdir)
        samples = run(args.samples, workdir)
        return {"figures": {name: describe(xs) for name, xs in samples.items()}, "context": ctx}

    return bench.run("thread_crash", args, measure, markdown, agent_log=True)


if __name__ == "__main__":
    sys.exit(main())
