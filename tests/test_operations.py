"""Operating a box: the walk test, health telemetry, and what the centre sees of them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from agent.box.daemon import Daemon
from agent.box.walktest import boot_id
from agent.config import load_config
from agent.sdnotify import Notifier
from agent.testing.broker import Mosquitto
from tests.conftest import AgentProcess, Collector, cli, wait_for, write_config


def test_walk_test_marks_alarms_and_the_centre_sees_it(agent_process: AgentProcess,
                                                       collector: Collector) -> None:
    agent_process.start()
    on = cli("test-mode", "on", "--minutes", "30", "-c", str(agent_process.config))
    assert on.returncode == 0 and "test mode ON" in on.stdout
    wait_for(lambda: collector.payloads("/status")[-1].get("test_mode_until"), 5,
             "test mode in the retained status")
    agent_process.press("entrance")
    assert collector.wait_alarms(1)[0]["test"] is True
    assert "TEST MODE" in cli("status", "-c", str(agent_process.config)).stdout
    off = cli("test-mode", "off", "-c", str(agent_process.config))
    assert off.returncode == 0 and "OFF" in off.stdout
    agent_process.press("entrance")
    assert collector.wait_alarms(2)[1]["test"] is False
    assert collector.payloads("/status")[-1]["test_mode_until"] is None


def test_walk_test_survives_a_restart_and_switches_itself_off(agent_config: Path,
                                                              collector: Collector) -> None:
    state = agent_config.parent / "state"
    state.mkdir()
    (state / "test-mode.json").write_text(json.dumps(  # as a walk test 3 s from its end
        {"until_monotonic": time.monotonic() + 3, "boot_id": boot_id()}))
    agent = AgentProcess(agent_config).start()
    try:
        assert (agent.status() or {})["test_mode_until"]
        wait_for(lambda: (agent.status() or {}).get("test_mode_until") is None, 8,
                 "test mode to end by itself")
        wait_for(lambda: collector.payloads("/status")[-1]["test_mode_until"] is None, 5,
                 "the centre told")
        assert not (state / "test-mode.json").exists()
    finally:
        agent.close()


def test_test_mode_refuses_an_absurd_duration(agent_process: AgentProcess) -> None:
    agent_process.start()
    r = cli("test-mode", "on", "--minutes", "10000", "-c", str(agent_process.config))
    assert r.returncode == 1 and "1 to 240 minutes" in r.stderr


def test_health_telemetry_is_published_retained(agent_config: Path, broker: Mosquitto) -> None:
    d = Daemon(load_config(agent_config), notifier=Notifier(None), health_interval_s=0.5)
    d.start()
    runner = threading.Thread(target=d.supervise, daemon=True)
    runner.start()
    try:
        col = Collector(broker.port, ["schools/sim-school/health"], client_id="health").start()
        wait_for(lambda: col.payloads("/health"), 10, "a health message")
        health = col.payloads("/health")[-1]
        assert health["version"] and health["uptime_s"] >= 0
        assert set(health["buttons"]) == {"entrance", "gym", "office", "corridor"}
        assert health["outbox"]["alarm"] == 0 and health["disk_free_mb"] > 0
        assert "clock_synced" in health and "cpu_temp_c" in health
        col.stop()
        late = Collector(broker.port, ["schools/sim-school/health"], client_id="late").start()
        wait_for(lambda: late.messages, 5, "the retained health")
        assert late.messages[0][2] is True  # a centre that connects later sees it at once
        late.stop()
    finally:
        d.request_stop()
        runner.join(5)
        d.stop()


def test_no_secret_reaches_a_log_line(tmp_path: Path, broker: Mosquitto) -> None:
    """A camera that cannot be reached is logged by address, never with its password; nor is
    the broker password."""
    secret, cam_secret = "s3cr3t-broker-pw", "Cam3raP4ss"
    (tmp_path / "pw").write_text(secret + "\n")
    (tmp_path / "pw").chmod(0o600)
    cfg = write_config(
        tmp_path / "agent.yaml", broker.port, tmp_path / "state",
        cameras=[{"id": "hall-cam", "source": f"rtsp://admin:{cam_secret}@127.0.0.1:9/stream"}],
    )
    text = cfg.read_text().replace("  keepalive_s: 5\n",
                                   f"  keepalive_s: 5\n  username: box\n  password_file: "
                                   f"{tmp_path / 'pw'}\n")
    cfg.write_text(text)
    agent = AgentProcess(cfg).start()
    try:
        wait_for(lambda: "hall-cam" in agent.output() and "rtsp://" in agent.output(), 15,
                 "the camera failure logged")
        status = json.dumps(agent.status())
    finally:
        agent.kill()
        agent.close()
    out = agent.output()
    assert "admin:***@" in out, out[-2000:]
    assert cam_secret not in out and secret not in out
    assert cam_secret not in status and secret not in status
