"""The alarm path end to end: the agent as a separate process, a real Mosquitto, mock GPIO.

Each test is something the centre would see: an alarm with every field, in order, exactly
when it must arrive, after a dead broker, a killed agent, or a clean stop.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from agent.testing.broker import Mosquitto
from tests.conftest import STATUS, AgentProcess, MqttClient, cli, wait_alarms, wait_for

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_press_delivers_an_alarm_with_every_field(
    agent_process: AgentProcess, collector: MqttClient
) -> None:
    agent_process.start()
    before = time.time()
    out = cli("simulate", "press", "entrance", "-c", str(agent_process.config)).stdout
    [alarm] = wait_alarms(collector, 1)
    assert alarm["event_id"] in out
    assert alarm["site_id"] == "sim-school"
    assert alarm["button_id"] == "entrance"
    assert alarm["location"]
    assert alarm["kind"] == "panic"
    assert alarm["seq"] == 1
    assert isinstance(alarm["clock_synced"], bool)
    assert RFC3339_MS.match(alarm["pressed_at"])
    stamp = time.mktime(time.strptime(alarm["pressed_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(stamp - time.timezone - before) < 5
    status = collector.payloads(STATUS)
    assert status and status[-1]["state"] == "online"


def test_broker_dead_for_three_presses_then_all_arrive_in_order(
    agent_process: AgentProcess, collector: MqttClient, broker: Mosquitto
) -> None:
    agent_process.start()
    wait_for(
        lambda: (agent_process.status() or {}).get("uplink", {}).get("state") == "online",
        10,
        "the agent online",
    )
    broker.kill()
    for button in ("entrance", "gym", "entrance"):
        agent_process.press(button)
    status = agent_process.status()
    assert status is not None and status["outbox"]["alarm"] == 3
    assert status["uplink"]["state"] != "online"
    broker.start()
    alarms = wait_alarms(collector, 3, timeout=15)
    assert [a["seq"] for a in alarms] == [1, 2, 3]
    assert [a["button_id"] for a in alarms] == ["entrance", "gym", "entrance"]
    assert len({a["event_id"] for a in alarms}) == 3
    wait_for(lambda: agent_process.status()["outbox"]["alarm"] == 0, 5, "an empty outbox")


def test_alarm_committed_then_agent_killed_arrives_after_restart(
    agent_config: Path, broker: Mosquitto, collector: MqttClient
) -> None:
    broker.kill()  # nothing can be sent: the alarm exists only on the box's disk
    agent = AgentProcess(agent_config)
    try:
        agent.start()
        press = cli("simulate", "press", "office", "-c", str(agent_config))
        assert press.returncode == 0, press.stderr
        event_id = re.search(r"event_id=(\S+)", press.stdout).group(1)  # type: ignore[union-attr]
        assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
    finally:
        agent.close()
    broker.start()
    agent = AgentProcess(agent_config)
    try:
        agent.start()
        [alarm] = wait_alarms(collector, 1, timeout=15)
        assert alarm["event_id"] == event_id and alarm["button_id"] == "office"
        agent.press("gym")
        alarms = wait_alarms(collector, 2)
        assert [a["seq"] for a in alarms] == [1, 2]  # seq survived the crash
    finally:
        agent.close()


def test_killed_agent_turns_retained_status_offline_via_the_will(
    agent_process: AgentProcess, collector: MqttClient, broker: Mosquitto
) -> None:
    agent_process.start()
    wait_for(lambda: any(s["state"] == "online" for s in collector.payloads(STATUS)), 10, "online")
    agent_process.kill(signal.SIGKILL)
    wait_for(lambda: collector.payloads(STATUS)[-1]["state"] == "offline", 15, "the will")
    with MqttClient(broker.port, [STATUS], client_id="late") as late:
        # a centre that connects later sees the retained offline state
        [retained] = late.wait(STATUS, 1, timeout=5)
        assert retained.retain and retained.json()["state"] == "offline"


def test_sigterm_publishes_offline_and_exits_0_within_5s(
    agent_process: AgentProcess, collector: MqttClient
) -> None:
    agent_process.start()
    wait_for(lambda: any(s["state"] == "online" for s in collector.payloads(STATUS)), 10, "online")
    t0 = time.monotonic()
    assert agent_process.kill(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 5
    wait_for(lambda: collector.payloads(STATUS)[-1]["state"] == "offline", 5, "offline")
    assert collector.payloads(STATUS)[-1]["reason"] == "agent stopped"


def test_status_command_reports_buttons_and_outbox(
    agent_process: AgentProcess, collector: MqttClient
) -> None:
    agent_process.start()
    agent_process.press("gym")
    wait_alarms(collector, 1)
    r = cli("status", "-c", str(agent_process.config))
    assert r.returncode == 0, r.stderr
    assert "gym" in r.stdout and "last alarm panic gym" in r.stdout
    status = json.loads(cli("status", "--json", "-c", str(agent_process.config)).stdout)
    assert set(status["buttons"]) == {"entrance", "gym", "office", "corridor"}
    assert status["last_alarm"]["button_id"] == "gym"
    # What the pacer uses, measured (TCP_INFO on Linux) or fixed: the same keys either way.
    assert set(status["uplink"]["pacing"]) == {
        "mode",
        "upload_kbps",
        "ceiling_kbps",
        "base_rtt_ms",
        "queue_delay_ms",
        "alarm_wait_ms",
        "notsent_lowat",
        "window",
    }
    assert "pacing    " in r.stdout


def test_status_without_a_running_agent_says_so(agent_config: Path) -> None:
    r = cli("status", "-c", str(agent_config))
    assert r.returncode == 1
    assert "not running" in r.stderr and "Traceback" not in r.stderr


def test_control_socket_is_owner_only(agent_process: AgentProcess) -> None:
    agent_process.start()
    sock = Path(
        json.loads(cli("status", "--json", "-c", str(agent_process.config)).stdout)
        and agent_process.config.parent / "state" / "control.sock"
    )
    assert sock.stat().st_mode & 0o777 == 0o600


def test_a_start_that_times_out_leaves_no_agent_running(agent_config: Path) -> None:
    agent = AgentProcess(agent_config)
    with pytest.raises(AssertionError, match="control socket"):
        agent.start(timeout=0.01)
    assert agent.proc is not None and agent.proc.poll() is not None, "the agent was left running"


def test_a_start_whose_agent_exits_fails_at_once_with_its_log(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("site: {id: Not Valid}\n")
    agent = AgentProcess(config)
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)exited \(2\).*site\.id"):
        agent.start(timeout=60)
    assert time.monotonic() - t0 < 30, "start() waited for an agent that had already exited"
