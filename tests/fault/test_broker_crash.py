"""The broker dies (SIGKILL) and comes back, again and again, at seeded random moments.

Presses land before, during and after each outage; with a clip backlog draining, the kills also
land mid-chunk and mid-window. Every alarm the agent acknowledged must reach the centre. Order
of ARRIVAL is not asserted here: an alarm the broker acked and then lost with its process is
resent when the centre's receipt does not come (5 s later, docs/protocol.md), after newer ones
went through; ``seq`` (asserted gap-free and increasing in press order) is what orders them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from agent.testing.broker import Mosquitto
from agent.testing.mqtt import MqttClient
from tests.conftest import wait_for
from tests.fault.conftest import fault_seed, fault_site, prefill_clips


def _broker_kills(
    tmp_path: Path, broker: Mosquitto, name: str, kills: int, backlog: int, seed: int
) -> None:
    fault_seed(name, seed)
    rng = random.Random(seed)
    if backlog:
        prefill_clips(tmp_path / "state" / "outbox.db", backlog, ("fault-cam-0", "fault-cam-1"))
    clips = MqttClient(
        broker.port, ["schools/+/clip/#"], client_id=f"clips-{name}", persistent=True, keepalive=5
    ).connect()
    try:  # 8 Mbit/s video cap: the backlog takes ~backlog/60 s to drain, the kills land in it
        with fault_site(name, tmp_path, broker, uplink={"max_kbps": 8000}) as site:
            agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
            for _ in range(kills):
                presser.press_n(rng.randint(0, 2))
                time.sleep(rng.uniform(0.0, 1.0))  # connected, draining, or still reconnecting
                broker.kill()
                presser.press_n(rng.randint(1, 3))  # these can only wait in the outbox
                time.sleep(rng.uniform(0.0, 0.8))
                broker.start()
            last_start = time.monotonic()
            presser.press_n(2)
            tally.wait_delivered(centre, 30)
            delivered_s = time.monotonic() - last_start
            depth = agent.outbox()
            chunk_ids = [m.payload[:6] for m in clips.received()]
            info = tally.report(
                centre,
                seed=seed,
                kills=kills,
                backlog_chunks=backlog,
                chunks_received=len(set(chunk_ids)),
                chunk_copies=len(chunk_ids),
                outbox_clips_left=depth.get("clip"),
                all_stored_s_after_last_restart=f"{delivered_s:.1f}",
            )
            tally.assert_ok(info, in_order=False)
            assert delivered_s <= 10, "alarms reached the centre more than 10 s after the broker"
            assert agent.proc is not None and agent.proc.poll() is None, "the agent died"
            wait_for(lambda: agent.uplink_state() == "online", 10, "the uplink online")
            assert "Traceback" not in agent.output(), "a thread crashed (see the agent's log)"
    finally:
        clips.close()


def test_broker_killed_at_random_moments(tmp_path: Path, broker: Mosquitto, seed: int) -> None:
    _broker_kills(tmp_path, broker, "broker_kill", kills=8, backlog=0, seed=seed)


def test_broker_killed_while_a_clip_backlog_drains(
    tmp_path: Path, broker: Mosquitto, seed: int
) -> None:
    _broker_kills(tmp_path, broker, "broker_kill_backlog", kills=6, backlog=600, seed=seed)


@pytest.mark.slow
def test_soak_broker_killed_at_random_moments(tmp_path: Path, broker: Mosquitto, seed: int) -> None:
    _broker_kills(tmp_path, broker, "soak_broker_kill", kills=60, backlog=0, seed=seed)


@pytest.mark.slow
def test_soak_broker_killed_while_a_clip_backlog_drains(
    tmp_path: Path, broker: Mosquitto, seed: int
) -> None:
    _broker_kills(tmp_path, broker, "soak_broker_kill_backlog", kills=40, backlog=4000, seed=seed)
