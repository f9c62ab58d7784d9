"""Operating a box: the walk test, health telemetry, and what the centre sees of them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.box.walktest import boot_id
from agent.testing.broker import Mosquitto
from tests.conftest import (
    STATUS,
    AgentProcess,
    InProcessAgent,
    MqttClient,
    cli,
    subscriber,
    wait_alarms,
    wait_for,
    write_config,
)


def test_walk_test_marks_alarms_and_the_centre_sees_it(
    agent_process: AgentProcess, collector: MqttClient
) -> None:
    agent_process.start()
    on = cli("test-mode", "on", "--minutes", "30", "-c", str(agent_process.config))
    assert on.returncode == 0 and "test mode ON" in on.stdout
    wait_for(
        lambda: collector.payloads(STATUS)[-1].get("test_mode_until"),
        5,
        "test mode in the retained status",
    )
    agent_process.press("entrance")
    assert wait_alarms(collector, 1)[0]["test"] is True
    assert "TEST MODE" in cli("status", "-c", str(agent_process.config)).stdout
    off = cli("test-mode", "off", "-c", str(agent_process.config))
    assert off.returncode == 0 and "OFF" in off.stdout
    agent_process.press("entrance")
    assert wait_alarms(collector, 2)[1]["test"] is False
    assert collector.payloads(STATUS)[-1]["test_mode_until"] is None


def test_walk_test_survives_a_restart_and_switches_itself_off(
    agent_config: Path, collector: MqttClient
) -> None:
    state = agent_config.parent / "state"
    state.mkdir()
    (state / "test-mode.json").write_text(
        json.dumps(  # as a walk test 3 s from its end
            {"until_monotonic": time.monotonic() + 3, "boot_id": boot_id()}
        )
    )
    agent = AgentProcess(agent_config).start()
    try:
        assert (agent.status() or {})["test_mode_until"]
        wait_for(
            lambda: (agent.status() or {}).get("test_mode_until") is None,
            8,
            "test mode to end by itself",
        )
        wait_for(
            lambda: collector.payloads(STATUS)[-1]["test_mode_until"] is None, 5, "the centre told"
        )
        assert not (state / "test-mode.json").exists()
    finally:
        agent.close()


def test_test_mode_refuses_an_absurd_duration(agent_process: AgentProcess) -> None:
    agent_process.start()
    r = cli("test-mode", "on", "--minutes", "10000", "-c", str(agent_process.config))
    assert r.returncode == 1 and "1 to 240 minutes" in r.stderr


def test_health_telemetry_is_published_retained(agent_config: Path, broker: Mosquitto) -> None:
    box = InProcessAgent(agent_config, health_interval_s=0.5).start(online_s=None)
    try:
        col = subscriber(broker.port, "schools/sim-school/health", client_id="health")
        health = col.wait("#", 1, timeout=10)[-1].json()
        assert health["version"] and health["uptime_s"] >= 0
        assert set(health["buttons"]) == {"entrance", "gym", "office", "corridor"}
        assert health["outbox"]["alarm"] == 0 and health["disk_free_mb"] > 0
        assert "clock_synced" in health and "cpu_temp_c" in health
        col.close()
        late = subscriber(broker.port, "schools/sim-school/health", client_id="late")
        # a centre that connects later sees it at once
        assert late.wait("#", 1, timeout=5)[0].retain
        late.close()
    finally:
        box.stop()


def test_no_secret_reaches_a_log_line(tmp_path: Path, broker: Mosquitto) -> None:
    """A camera that cannot be reached is logged by address, never with its password; nor is
    the broker password."""
    secret, cam_secret = "s3cr3t-broker-pw", "Cam3raP4ss"
    (tmp_path / "pw").write_text(secret + "\n")
    (tmp_path / "pw").chmod(0o600)
    cfg = write_config(
        tmp_path / "agent.yaml",
        broker.port,
        tmp_path / "state",
        cameras=[{"id": "hall-cam", "source": f"rtsp://admin:{cam_secret}@127.0.0.1:9/stream"}],
        mqtt={"username": "box", "password_file": str(tmp_path / "pw")},
    )
    agent = AgentProcess(cfg).start()
    try:
        wait_for(
            lambda: "hall-cam" in agent.output() and "rtsp://" in agent.output(),
            15,
            "the camera failure logged",
        )
        status = json.dumps(agent.status())
    finally:
        agent.kill()
        agent.close()
    out = agent.output()
    assert "admin:***@" in out, out[-2000:]
    assert cam_secret not in out and secret not in out
    assert cam_secret not in status and secret not in status
