"""Delivery is end to end: the box keeps an alarm until the centre's receiver confirms it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.testing.broker import Mosquitto
from tests.conftest import AgentProcess, Centre, wait_for


def _outbox(agent: AgentProcess) -> dict[str, Any]:
    return (agent.status() or {}).get("outbox", {})


def test_the_centre_confirms_and_the_box_forgets(
    agent_process: AgentProcess, centre: Centre
) -> None:
    centre.start()
    agent_process.start()
    wait_for(
        lambda: (agent_process.status() or {})["uplink"]["centre"] == "listening",
        10,
        "the centre's presence",
    )
    agent_process.press("entrance")
    wait_for(lambda: len(centre.alarms()) == 1, 10, "the alarm stored at the centre")
    wait_for(
        lambda: (
            _outbox(agent_process).get("unconfirmed") == 0
            and _outbox(agent_process).get("alarm") == 0
        ),
        10,
        "the receipt",
    )


def test_with_no_centre_the_alarm_waits_unconfirmed_then_is_resent(
    agent_process: AgentProcess, centre: Centre
) -> None:
    agent_process.start()
    agent_process.press("gym")
    wait_for(
        lambda: _outbox(agent_process).get("unconfirmed") == 1,
        10,
        "delivered to the broker but unconfirmed",
    )
    status = agent_process.status() or {}
    assert status["uplink"]["centre"] != "listening"
    centre.start()  # a centre that never had a session: only the box's resend reaches it
    wait_for(lambda: len(centre.alarms()) == 1, 15, "the resent alarm at the centre")
    assert centre.alarms()[0]["button_id"] == "gym"
    wait_for(lambda: _outbox(agent_process).get("unconfirmed") == 0, 10, "the receipt")


def test_centre_restart_loses_nothing_and_stores_no_duplicate(
    agent_process: AgentProcess, centre: Centre
) -> None:
    centre.start()
    agent_process.start()
    wait_for(
        lambda: (agent_process.status() or {})["uplink"]["centre"] == "listening", 10, "presence"
    )
    centre.stop()
    wait_for(
        lambda: (agent_process.status() or {})["uplink"]["centre"] == "NOT listening",
        10,
        "the box sees the centre go",
    )
    agent_process.press("entrance")
    agent_process.press("gym")
    centre.start()  # its persistent session got both; the box also resends both
    wait_for(
        lambda: _outbox(agent_process).get("unconfirmed") == 0 and len(centre.alarms()) == 2,
        15,
        "both confirmed",
    )
    assert [a["seq"] for a in centre.alarms()] == [1, 2]


def test_unconfirmed_alarm_survives_a_box_restart(
    agent_config: Path, broker: Mosquitto, centre: Centre
) -> None:
    agent = AgentProcess(agent_config).start()
    try:
        agent.press("office")
        wait_for(lambda: _outbox(agent).get("unconfirmed") == 1, 10, "unconfirmed")
        agent.kill()
    finally:
        agent.close()
    broker.kill()  # and the broker lost its copy: only the box still has the alarm
    broker.start()
    centre.start()
    agent = AgentProcess(agent_config).start()
    try:
        wait_for(lambda: len(centre.alarms()) == 1, 15, "the alarm from the box's disk")
        wait_for(lambda: _outbox(agent).get("unconfirmed") == 0, 10, "confirmed")
    finally:
        agent.close()
