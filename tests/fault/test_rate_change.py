"""The school's upload rate changes under a running agent (4G through the day, an ADSL line
that resyncs): on a real tbf link, the pacer's estimate of the upload rate follows it down and
up again, with no ``uplink.max_kbps`` set, while a clip backlog drains; and no alarm is lost.

The estimate is read the way a technician reads it, from ``edge-agent status --json``
(``uplink.pacing.upload_kbps``). It counts TCP payload, so it is about 95 % of the tbf rate
(Ethernet, IP and TCP headers take the rest). The bounds are loose on purpose (a shared CI
machine); bench/uplink.py has the figures.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from agent.testing.netns import NetLab
from agent.testing.site import AgentProcess
from tests.fault.conftest import fault_site, prefill_clips

FOLLOW_S = 10.0  # the estimate follows a change within this (measured: about 3 s)
LATENCY_BOUND_S = 2.0  # an alarm queued behind the backlog would wait minutes


def _estimate(agent: AgentProcess) -> float | None:
    pacing = ((agent.status() or {}).get("uplink") or {}).get("pacing") or {}
    value = pacing.get("upload_kbps")
    return float(value) if value is not None else None


def _follows(agent: AgentProcess, kbit: int, what: str) -> float:
    """Seconds until the estimate is within [0.8, 1.05] x the link's rate. Asked twice a
    second, as a technician might: not as fast as wait_for polls, which would be a load."""
    t0 = time.monotonic()
    seen: list[float | None] = []
    while time.monotonic() - t0 < FOLLOW_S:
        seen.append(estimate := _estimate(agent))
        if estimate is not None and 0.8 * kbit <= estimate <= 1.05 * kbit:
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(
        f"the estimate did not follow the link to {kbit} kbit/s ({what}) "
        f"in {FOLLOW_S:.0f} s: {seen}"
    )


def test_the_upload_estimate_follows_the_link_down_and_up(netlab: NetLab, tmp_path: Path) -> None:
    prefill_clips(tmp_path / "state" / "outbox.db", 3000)
    netlab.shape("2mbit", "4kb", "200ms")
    with fault_site("rate_change", tmp_path, netlab) as site:
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        first = _follows(agent, 2000, "at start")
        netlab.shape("500kbit", "4kb", "200ms")
        down = _follows(agent, 500, "after the drop")
        pressed_at: dict[str, float] = {}
        for _ in range(8):
            time.sleep(0.4)
            t0 = time.monotonic()
            for e in presser.press():
                pressed_at[e["event_id"]] = t0
        netlab.shape("2mbit", "4kb", "200ms")
        up = _follows(agent, 2000, "after the rise")
        tally.wait_delivered(centre, 20)
        latencies = [
            arr - t0 for eid, t0 in pressed_at.items() if (arr := centre.arrival(eid)) is not None
        ]
        pacing = (agent.status() or {})["uplink"]["pacing"]
        info = tally.report(
            centre,
            start_s=round(first, 1),
            follow_down_s=round(down, 1),
            follow_up_s=round(up, 1),
            upload_kbps=pacing["upload_kbps"],
            alarm_p50_ms=round(statistics.median(latencies) * 1000) if latencies else "nan",
            alarm_max_ms=round(max(latencies) * 1000) if latencies else "nan",
        )
        tally.assert_ok(info)
        assert pacing["mode"] == "auto" and pacing["ceiling_kbps"] is None
        assert agent.outbox()["clip"] > 0, "the backlog drained: nothing was paced"
        assert max(latencies) < LATENCY_BOUND_S, f"an alarm waited behind video: {latencies}"
