"""Commands from the centre, end to end: signed at the centre, verified on the box."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.centre.commander import send_command
from agent.commands.keys import load_private_key, sign_command
from agent.commands.wire import CommandRejected
from agent.testing.broker import Mosquitto
from tests.conftest import AgentProcess, Centre, MqttClient, cli, subscriber, wait_for, write_config


@pytest.fixture
def box(tmp_path: Path, broker: Mosquitto, keys: Path) -> AgentProcess:
    cfg = write_config(
        tmp_path / "agent.yaml",
        broker.port,
        tmp_path / "state",
        commands={"public_key_file": str(keys / "centre.pub")},
        indicators={"led_pin": 5, "ack_timeout_s": 300},
    )
    return AgentProcess(cfg)


def _central(broker: Mosquitto, keys: Path, *args: str) -> tuple[int, dict[str, object]]:
    r = cli(
        "central",
        "--broker",
        broker.url,
        "--store",
        str(keys.parent / "centre"),
        "--key",
        str(keys / "centre.key"),
        *args,
        timeout=30,
    )
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr})


def test_ack_from_the_centre_turns_the_indicator_steady(
    box: AgentProcess, broker: Mosquitto, keys: Path
) -> None:
    centre = Centre(broker.url, keys.parent / "centre").start()
    try:
        box.start()
        out = cli("simulate", "press", "entrance", "-c", str(box.config)).stdout
        event_id = re.search(r"event_id=(\S+)", out).group(1)  # type: ignore[union-attr]
        wait_for(lambda: (box.status() or {}).get("indicator") == "waiting", 5, "blinking")
        wait_for(lambda: len(centre.alarms()) == 1, 10, "the alarm at the centre")
        code, result = _central(broker, keys, "ack", event_id)
        assert code == 0 and result["ok"] is True, result
        assert result["data"]["shown"] is True  # type: ignore[index]
        assert (box.status() or {})["indicator"] == "acknowledged"
    finally:
        centre.stop()
        box.close()


def test_ping(box: AgentProcess, broker: Mosquitto, keys: Path) -> None:
    box.start()
    try:
        code, result = _central(broker, keys, "ping", "sim-school")
        assert code == 0 and result["data"]["pong"] is True  # type: ignore[index]
    finally:
        box.close()


def test_forged_and_garbage_commands_are_refused_and_the_box_lives(
    box: AgentProcess, broker: Mosquitto, tmp_path: Path
) -> None:
    box.start()
    try:
        impostor = tmp_path / "impostor"
        assert cli("central", "--key", str(impostor / "centre.key"), "keygen").returncode == 0
        forged = sign_command(load_private_key(impostor / "centre.key"), "sim-school", "ping", {})
        results = subscriber(broker.port, "schools/sim-school/cmd/result", client_id="results")
        junk = [forged, b"", b"\xff\xfe", b"{", b"[]", b'{"id": 1}', b"x" * 100_000]
        with MqttClient(broker.port) as attacker:
            for payload in junk:
                attacker.publish("schools/sim-school/cmd", payload)
        refusals = [m.json() for m in results.wait("#", len(junk), timeout=10)]
        assert all(r["ok"] is False and r["id"] is None for r in refusals)
        assert "signature" in refusals[0]["reason"]
        results.close()
        assert box.proc is not None and box.proc.poll() is None
        box.press("gym")  # and it still does its job
        assert (box.status() or {})["last_alarm"]["button_id"] == "gym"
    finally:
        box.close()


def test_a_box_without_the_centres_key_obeys_nothing(
    agent_process: AgentProcess, broker: Mosquitto, keys: Path
) -> None:
    agent_process.start()
    code, result = _central(broker, keys, "ping", "sim-school")
    assert code == 1 and "no result" in str(result.get("stderr"))


def test_walk_test_and_a_handlers_refusal_as_the_centre_sends_them(
    box: AgentProcess, broker: Mosquitto, keys: Path
) -> None:
    def send(name: str, args: dict[str, object]) -> dict[str, Any]:
        return send_command(broker.url, "schools", "sim-school", keys / "centre.key", name, args)

    box.start()
    try:
        on = send("test_mode", {"on": True, "minutes": 5})
        assert on["ok"] is True and on["data"]["test_mode_until"], on
        assert (box.status() or {})["test_mode_until"]
        off = send("test_mode", {"on": False})
        assert off["ok"] is True and off["data"]["test_mode_until"] is None, off
        assert (box.status() or {})["test_mode_until"] is None
        live = send("live", {"camera_id": "entrance-cam", "seconds": 5})  # no cameras here
        assert (live["ok"], live["reason"]) == (False, "unknown_camera: no such camera on this box")
        with pytest.raises(CommandRejected, match="from 1 to 240"):  # refused before signing
            send("test_mode", {"on": True, "minutes": 241})
    finally:
        box.close()
