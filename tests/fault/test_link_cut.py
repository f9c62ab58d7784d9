"""The link dies without a goodbye: no FIN, no RST, TCP just hangs.

The broker runs in its own network namespace, reached from the agent's namespace through a veth
pair (tests/fault/conftest.py: NetLab). A cut is either the broker's end of the cable going
dark (``down``: the agent's end loses carrier but keeps its address) or a black hole (every
packet dropped both ways by a ``pfifo limit 0`` qdisc, the link still up: SYNs vanish, so
connect() itself hangs until its timeout). The agent must notice (an alarm's PUBACK overdue by
5 s, or MQTT keepalive within 2 x keepalive_s), keep every press meanwhile, reconnect when
the link returns and deliver everything, in seq order.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from agent.testing.netns import NetLab
from tests.conftest import wait_for
from tests.fault.conftest import KEEPALIVE_S, FaultSite, fault_seed, fault_site


def _one_cut(lab: NetLab, site: FaultSite, mode: str, hold_s: float | None) -> dict[str, float]:
    """Cut, press, (wait for the agent to notice, or hold_s), press, restore; the timings."""
    agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
    lab.cut(mode)
    t_cut = time.monotonic()
    presser.press()  # handed to paho on a connection that is already dead
    detect = float("nan")
    if hold_s is None:  # hold until the agent itself declares the link dead
        # The agent's own word: a status query that fails under load ("") is not a detection.
        wait_for(
            lambda: agent.uplink_state() in ("offline", "connecting"),
            3 * KEEPALIVE_S,
            "the agent to notice the dead link via keepalive",
        )
        detect = time.monotonic() - t_cut
        presser.press()  # waits in the outbox while the agent retries
        time.sleep(1.5)  # a few failed reconnects
    else:
        time.sleep(hold_s)
        presser.press()
    waiting = [eid for eid in tally.acked if eid not in centre.received_ids()]
    lab.restore()
    t_up = time.monotonic()
    tally.wait_delivered(centre, 20)
    arrivals = [t for t in (centre.arrival(e) for e in waiting) if t is not None]
    first = min(arrivals) - t_up if arrivals else float("nan")
    return {"detect_s": detect, "restore_to_first_alarm_s": first, "cut_s": t_up - t_cut}


@pytest.mark.parametrize("mode", ["down", "blackhole"])
def test_link_cut_longer_than_keepalive(netlab: NetLab, tmp_path: Path, mode: str) -> None:
    with fault_site(f"link_cut_{mode}", tmp_path, netlab) as site:
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        presser.press_n(2)
        tally.wait_delivered(centre, 10)
        t = _one_cut(netlab, site, mode, hold_s=None)
        presser.press()
        tally.wait_delivered(centre, 15)
        info = tally.report(centre, **{k: f"{v:.2f}" for k, v in t.items()})
        tally.assert_ok(info)
        assert t["detect_s"] <= 2 * KEEPALIVE_S + 1.5, "the dead link went unnoticed"
        out = agent.output()  # noticed by the alarm's overdue PUBACK, or else by keepalive
        assert any(why in out for why in ("no PUBACK", "connection lost", "disconnected"))


def test_short_cut_tcp_survives(netlab: NetLab, tmp_path: Path) -> None:
    """Shorter than keepalive: the connection survives, TCP retransmits, nothing is lost."""
    with fault_site("link_cut_short", tmp_path, netlab) as site:
        site.presser.press()
        t = _one_cut(netlab, site, "down", hold_s=2.0)
        info = site.tally.report(site.centre, **{k: f"{v:.2f}" for k, v in t.items()})
        site.tally.assert_ok(info)


@pytest.mark.slow
def test_soak_link_cut_many_times(netlab: NetLab, tmp_path: Path, seed: int) -> None:
    """Many cuts of random kind and length, some shorter and some longer than keepalive."""
    name = "soak_link_cut"
    fault_seed(name, seed)
    rng = random.Random(seed)
    worst, worst_cut = 0.0, ""
    with fault_site(name, tmp_path, netlab) as site:
        for _ in range(12):
            site.presser.press_n(rng.randint(0, 2))
            mode = rng.choice(["down", "blackhole"])
            hold = rng.choice([None, rng.uniform(0.2, 4.0)])
            t = _one_cut(netlab, site, mode, hold_s=hold)
            if t["restore_to_first_alarm_s"] > worst:
                worst = t["restore_to_first_alarm_s"]
                worst_cut = f"{mode}/{t['cut_s']:.1f}s"
        info = site.tally.report(
            site.centre, seed=seed, cuts=12, worst_restore_s=f"{worst:.2f}", worst_cut=worst_cut
        )
        site.tally.assert_ok(info)


def test_silent_death_is_noticed_by_the_alarm_not_by_keepalive(
    netlab: NetLab, tmp_path: Path
) -> None:
    """A connection that dies without a sound, with a long keepalive (as a school router's
    lost NAT state looks): the alarm's missing PUBACK makes the agent reconnect, long before
    keepalive would have noticed."""
    with fault_site("silent_death", tmp_path, netlab, mqtt={"keepalive_s": 60}) as site:
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        presser.press()
        tally.wait_delivered(centre, 10)
        netlab.cut("blackhole")
        t_press = time.monotonic()
        presser.press()
        time.sleep(7.0)  # past the 5 s PUBACK deadline, far short of 2 x 60 s keepalive
        netlab.restore()
        tally.wait_delivered(centre, 10)
        delivered_s = time.monotonic() - t_press
        info = tally.report(centre, delivered_s=f"{delivered_s:.2f}")
        tally.assert_ok(info)
        assert delivered_s < 15, "the alarm waited for keepalive"
        assert "no PUBACK for an alarm" in agent.output()
