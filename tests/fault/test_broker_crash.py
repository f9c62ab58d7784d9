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

from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Priority
from agent.testing.broker import Mosquitto
from agent.testing.mqtt import MqttClient
from tests.conftest import wait_for
from tests.fault.conftest import (
    AgentProcess,
    Centre,
    Presser,
    Tally,
    fault_config,
    fault_seed,
)

CHUNK = 16_000


def _prefill_clips(db: Path, n: int) -> None:
    """A clip backlog queued before the agent starts, as after a long outage."""
    box = Outbox.open(db)
    try:  # two cameras' clips, interleaved as two alarms' clips are queued
        box.add_many(
            (
                Priority.CLIP,
                f"schools/sim-school/clip/fault-cam-{i % 2}",
                f"clip-{i}",
                b"%06d\n" % i + bytes(CHUNK),
                None,
            )
            for i in range(n)
        )
    finally:
        box.close()


def _broker_kills(
    tmp_path: Path, broker: Mosquitto, name: str, kills: int, backlog: int, seed: int
) -> None:
    fault_seed(name, seed)
    rng = random.Random(seed)
    storage = tmp_path / "state"
    if backlog:
        _prefill_clips(storage / "outbox.db", backlog)
    # 8 Mbit/s video cap: the backlog takes ~backlog/60 s to drain, so the kills land in it.
    cfg = fault_config(
        tmp_path / "agent.yaml", storage, port=broker.port, uplink={"max_kbps": 8000}
    )
    centre = Centre("127.0.0.1", broker.port, tmp_path / "centre", name=f"c-{name}").start()
    clips = MqttClient(
        broker.port, ["schools/+/clip/#"], client_id=f"clips-{name}", persistent=True, keepalive=5
    ).connect()
    agent = AgentProcess(cfg)
    tally = Tally(name)
    try:
        agent.start()
        wait_for(
            lambda: (agent.status() or {})["uplink"]["centre"] == "listening",
            10,
            "the centre's presence at the agent",
        )
        presser = Presser(storage, tally)
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
        agent.close()
        clips.close()
        centre.stop()


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
