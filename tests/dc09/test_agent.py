"""The whole agent (a separate process, as systemd runs it) against pysiaalarm and a real
Mosquitto: each press reaches both the DC-09 receiver and the MQTT centre, neither path waits
for the other, and nothing queued for DC-09 is lost through kill -9, a receiver that is away,
or a primary that is down. The full disk: tests/fault/test_storage.py."""

from __future__ import annotations

import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pysiaalarm", reason="pip install -e '.[test]' (pysiaalarm, the receiver)")

from pysiaalarm import SIAEvent

from agent.delivery.dc09.translit import location_text
from agent.testing.broker import Mosquitto
from agent.testing.sia import ACCOUNT, SiaReceiver, zoned_school
from tests.conftest import (
    AgentProcess,
    InProcessAgent,
    MqttClient,
    alarms,
    cli,
    subscriber,
    wait_alarms,
    wait_for,
)

ENTRANCE = "Главный вход, 1 этаж"
OFFICE = "Кабинет директора"
FAST = {
    "ack_timeout_s": 0.5,
    "attempts": 1,
    "retry_max_s": 0.5,
    "supervision_s": 10,
    "test_report_s": 0,
}  # loopback: a lost answer costs half a second, not five
HEALTH = "schools/+/health"
OLD_OUTBOX = Path(__file__).parent.parent / "data" / "outbox-7ed4fb4.sql"

Receivers = Callable[..., SiaReceiver]
StartAgent = Callable[..., AgentProcess]


def dc09_config(tmp_path: Path, broker_port: int, *receivers: dict[str, Any], **dc09: Any) -> Path:
    """The simulated school with a dc09 section: every button numbered (its zone: entrance 1,
    gym 2, office 3, corridor 4), the office a hold-up button, locations in Russian as a school
    writes them."""
    return zoned_school(
        tmp_path / "agent.yaml",
        port=broker_port,
        storage=tmp_path / "state",
        site={"name": "Школа №42"},
        buttons={
            "entrance": {"location": ENTRANCE},
            "office": {"location": OFFICE, "holdup": True},
        },
        dc09={"account": ACCOUNT, "receivers": list(receivers), **FAST, **dc09},
    )


def entry(rx: SiaReceiver) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": rx.port, "transport": str(rx.transport)}


def dead_port() -> int:
    """A loopback port nothing listens on (until a test starts a receiver there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def codes(events: list[SIAEvent]) -> list[tuple[str, str]]:
    """(SIA code, zone) per message, as a centre files them."""
    return [(str(e.code), str(e.message)) for e in events]


def xdata(e: SIAEvent) -> dict[str, str]:
    return {str(x.identifier): str(x.value) for x in e.extended_data or []}


def dc09_status(agent: AgentProcess) -> dict[str, Any]:
    return dict((agent.status() or {}).get("dc09") or {})


@pytest.fixture
def start_agent(broker: Mosquitto, tmp_path: Path) -> Iterator[StartAgent]:
    """``start_agent(*receivers, **dc09)``: the agent as a process on :func:`dc09_config` with
    those receivers (a running one, or its config entry); each is closed at the end."""
    started: list[AgentProcess] = []

    def start(*receivers: SiaReceiver | dict[str, Any], **dc09: Any) -> AgentProcess:
        entries = [entry(r) if isinstance(r, SiaReceiver) else r for r in receivers]
        started.append(AgentProcess(dc09_config(tmp_path, broker.port, *entries, **dc09)))
        return started[-1].start()

    yield start
    for a in started:
        a.close()


def test_a_press_arrives_decoded_at_pysiaalarm_and_at_the_mqtt_centre(
    receivers: Receivers, collector: MqttClient, start_agent: StartAgent
) -> None:
    rx = receivers()
    agent = start_agent(rx)
    before = time.time()
    agent.press("entrance")
    agent.press("office")  # a hold-up button: HA on DC-09, a panic on MQTT
    pa, ha = rx.wait(2)
    assert codes([pa, ha]) == [("PA", "001"), ("HA", "003")]
    assert (pa.account, pa.ri) == (ACCOUNT, "1")  # the account; SIA "ri": area 1
    assert xdata(pa) == {"L": location_text(ENTRANCE)} == {"L": "Glavnyy vkhod, 1 etazh"}
    assert xdata(ha) == {"L": "Kabinet direktora"}
    assert abs(pa.timestamp.timestamp() - before) < 5
    alarms = wait_alarms(collector, 2)
    assert [(a["button_id"], a["kind"], a["location"]) for a in alarms] == [
        ("entrance", "panic", ENTRANCE),
        ("office", "panic", OFFICE),
    ]
    wait_for(lambda: dc09_status(agent).get("queue") == 0, 5, "the DC-09 queue empty")
    status = dc09_status(agent)
    assert status["path"] == "up" and status["active"] == f"tcp://127.0.0.1:{rx.port}"
    assert status["receivers"][0]["last_ack_at"] and status["refused"] == 0
    text = cli("status", "-c", str(agent.config)).stdout
    assert f"dc09      up via tcp://127.0.0.1:{rx.port}; queue 0" in text


def test_walk_test_and_restores_on_release_as_configured(
    receivers: Receivers, collector: MqttClient, start_agent: StartAgent
) -> None:
    rx = receivers()
    events = ["panic", "panic_restore", "walk_test", "test_start", "test_end"]
    agent = start_agent(rx, events=events)
    agent.press("entrance")  # press and release
    assert cli("test-mode", "on", "--minutes", "5", "-c", str(agent.config)).returncode == 0
    agent.press("gym")
    assert cli("test-mode", "off", "-c", str(agent.config)).returncode == 0
    agent.press("office")  # hold-up not in events: MQTT only
    got = rx.wait(5)
    assert codes(got) == [("PA", "001"), ("PH", "001"), ("TS", "000"), ("TP", "002"), ("TE", "000")]
    assert xdata(got[2]) == {"L": "Shkola No42"}  # the box's own events: the site's name
    alarms = wait_alarms(collector, 3)
    assert [(a["button_id"], a["test"]) for a in alarms] == [
        ("entrance", False),
        ("gym", True),
        ("office", False),
    ]
    time.sleep(0.5)
    assert len(rx.messages()) == 5  # no restore for the walk-test press, nothing for office


def test_kill_9_between_commit_and_ack_loses_nothing(
    receivers: Receivers, collector: MqttClient, start_agent: StartAgent
) -> None:
    port = dead_port()  # the receiver is not there yet: nothing can be acknowledged
    agent = start_agent({"host": "127.0.0.1", "port": port})
    for button in ("entrance", "gym", "office"):
        agent.press(button)
    assert dc09_status(agent)["queue"] == 3
    assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
    rx = receivers(port=port)
    agent = start_agent({"host": "127.0.0.1", "port": port})  # the same agent, its outbox
    assert codes(rx.wait(3)) == [("PA", "001"), ("PA", "002"), ("HA", "003")]
    wait_for(lambda: dc09_status(agent).get("queue") == 0, 5, "the DC-09 queue empty")
    wait_for(lambda: len([a for a in alarms(collector) if a["button_id"]]) >= 3, 10, "MQTT")
    presses = [a["button_id"] for a in alarms(collector) if a["button_id"]]
    assert presses == ["entrance", "gym", "office"]  # each once: the paths are apart


def test_a_receiver_away_for_a_while_gets_everything_queued_and_mqtt_never_waits(
    receivers: Receivers, collector: MqttClient, start_agent: StartAgent
) -> None:
    rx = receivers()
    port = rx.port
    agent = start_agent(rx)
    agent.press("entrance")
    rx.wait(1)
    rx.stop()
    for button in ("gym", "office", "entrance"):
        agent.press(button)
    wait_for(
        lambda: len([a for a in alarms(collector) if a["button_id"]]) == 4,
        10,
        "the presses at the MQTT centre",
    )
    assert dc09_status(agent)["queue"] == 3  # MQTT delivered them while DC-09 cannot
    wait_for(lambda: dc09_status(agent).get("path") == "down", 10, "the DC-09 path down")
    status = dc09_status(agent)
    assert status["queue"] == 3 and "cannot connect" in status["receivers"][0]["last_error"]
    wait_for(
        lambda: any("DC-09 path" in a["detail"] for a in alarms(collector)),
        10,
        "the DC-09 failure on the MQTT desk",
    )
    back = receivers(port=port)
    assert codes(back.wait(3, timeout=15)) == [("PA", "002"), ("HA", "003"), ("PA", "001")]
    wait_for(
        lambda: any("DC-09 path restored" in a["detail"] for a in alarms(collector)),
        10,
        "the DC-09 restore on the MQTT desk",
    )
    kinds = [(a["kind"], a["button_id"]) for a in alarms(collector) if not a["button_id"]]
    assert kinds == [("fault", ""), ("restore", "")]


def test_the_dc09_thread_crashes_and_is_restarted_with_its_queue(
    receivers: Receivers, start_agent: StartAgent
) -> None:
    """The crash-only rule (docs/architecture.md) for the dc09 thread: a crash is logged,
    the thread restarted at once from the outbox, and the next press goes out."""
    rx = receivers()
    agent = start_agent(rx)
    agent.press("entrance")
    rx.wait(1)
    reply = agent.call({"cmd": "inject", "thread": "dc09"})
    assert reply["status"]["thread_crashes"] == {"dc09": 1}
    agent.press("gym")
    assert codes(rx.wait(2)) == [("PA", "001"), ("PA", "002")]
    assert "thread dc09 crashed" in agent.output()


def test_the_primary_down_falls_back_to_the_backup(
    receivers: Receivers, collector: MqttClient, start_agent: StartAgent
) -> None:
    backup = receivers()
    agent = start_agent({"host": "127.0.0.1", "port": dead_port()}, backup)
    agent.press("entrance")
    assert codes(backup.wait(1)) == [("PA", "001")]
    wait_for(lambda: dc09_status(agent).get("queue") == 0, 5, "acknowledged")
    status = dc09_status(agent)
    assert status["active"] == f"tcp://127.0.0.1:{backup.port}"
    assert status["receivers"][0]["failures"] >= 1 and status["receivers"][1]["last_ack_at"]


def test_the_mqtt_paths_failure_and_return_go_over_dc09(
    receivers: Receivers, broker: Mosquitto, start_agent: StartAgent
) -> None:
    """keepalive_s 5: the centre's broker would publish the will after 7.5 s, so YC after that
    long offline, YK when the uplink is back."""
    rx = receivers()
    agent = start_agent(rx)
    wait_for(lambda: (agent.status() or {})["uplink"]["state"] == "online", 10, "online")
    broker.kill()
    [fail] = rx.wait(1, timeout=15)
    assert codes([fail]) == [("YC", "001")]
    broker.start()
    agent.press("gym")  # an alarm waiting: the uplink retries within 1 s, not its backoff
    got = codes(rx.wait(3, timeout=15))
    assert got[0] == ("YC", "001") and sorted(got[1:]) == [("PA", "002"), ("YK", "001")]
    assert dc09_status(agent)["mqtt_path_reported"] == "ok"


def test_selftest_sends_each_receiver_a_test_report(
    receivers: Receivers, broker: Mosquitto, tmp_path: Path
) -> None:
    rx = receivers()
    config = dc09_config(
        tmp_path, broker.port, entry(rx), {"host": "127.0.0.1", "port": dead_port()}
    )
    lines = cli("selftest", "-c", str(config)).stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("dc09 "))
    ok, bad, fix = lines[at : at + 3]
    assert ok.split()[:3] == ["dc09", f"tcp://127.0.0.1:{rx.port}", "PASS"]
    assert f"test report acknowledged (account {ACCOUNT}, SIA-DCS)" in ok
    assert bad.split()[2] == "FAIL" and "cannot connect" in bad
    assert fix.strip().startswith("-> check host, port and tcp/udp")
    [report] = rx.wait(1)
    assert codes([report]) == [("RP", "000")]


def test_health_and_the_old_outbox_file(
    receivers: Receivers, broker: Mosquitto, tmp_path: Path
) -> None:
    """An outbox made before the DC-09 table: the agent opens it, sends what it held over
    MQTT, and a new press goes both ways; the health message shows both paths."""
    rx = receivers()
    config = dc09_config(tmp_path, broker.port, entry(rx))
    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / "outbox.db")
    old.executescript(OLD_OUTBOX.read_text())
    old.close()
    seen = subscriber(broker.port, "schools/+/alarm", HEALTH, client_id="old")
    box = InProcessAgent(config, health_interval_s=0.0)  # health at every turn (1 s)
    daemon = box.daemon
    try:
        box.start(online_s=None)
        assert "dc09" in daemon.core_threads  # a hung dc09 thread withholds the watchdog
        [held] = wait_alarms(seen, 1)  # the one it had not sent (the other awaits a centre)
        assert (held["site_id"], held["seq"], held["button_id"]) == ("school-042", 2, "gym")
        box.press("gym")
        assert codes(rx.wait(1)) == [("PA", "002")]
        assert wait_alarms(seen, 2)[1]["seq"] == 3  # seq goes on from the old file's
        wait_for(lambda: daemon.dc09 is not None and daemon.dc09.queue.depth() == 0, 5, "ACK")
        wait_for(
            lambda: any((h.get("dc09") or {}).get("acked") for h in seen.payloads(HEALTH)),
            5,
            "health with both paths",
        )
        health = seen.payloads(HEALTH)[-1]
        assert health["dc09"]["path"] == "up" and health["dc09"]["queue"] == 0
        assert health["uplink"]["last_ack_at"] and health["uplink"]["state"] == "online"
    finally:
        box.stop()
        seen.close()
