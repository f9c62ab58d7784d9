"""The public test harness (agent/testing) keeps its promises: nothing left running when a start
fails, and an in-process agent cannot end the process that hosts it. (AgentProcess.start's own
failures: tests/test_alarm_e2e.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.testing.site import Site, school_config
from tests.conftest import InProcessAgent, MqttClient, wait_alarms, wait_for


def _running(path: Path) -> bool:
    return subprocess.run(["pgrep", "-f", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("agent", ["thread", "process"])
def test_a_site_that_fails_to_start_stops_its_broker(tmp_path: Path, agent: str) -> None:
    site = Site(tmp_path, agent=agent, site={"id": "Not Valid"})
    with pytest.raises((AssertionError, ConfigError)):
        site.start()
    assert site.broker.proc is None and not _running(tmp_path / "broker")


def test_an_in_process_agent_whose_supervisor_gives_up_fails_loudly(agent_config: Path) -> None:
    """In production a spent restart budget ends the process (exit 70); here that process is
    pytest, so the harness keeps the reason and raises it when the agent is stopped."""
    box = InProcessAgent(agent_config, max_crashes=0).start(online_s=None)
    box.daemon.supervisor.inject("control")  # one crash: over a budget of none
    gave_up = wait_for(lambda: box.gave_up, 5, "the supervisor to give up")  # on its own thread
    assert "control" in gave_up
    with pytest.raises(AssertionError, match="supervisor gave up: thread control crashed"):
        box.stop()


def test_a_site_runs_the_school_end_to_end(tmp_path: Path) -> None:
    stored: list[str] = []
    with (
        Site(tmp_path, on_alarm=lambda a: stored.append(a["event_id"])) as site,
        MqttClient(site.broker.port, ["schools/+/alarm"], client_id="watch") as watch,
    ):
        box = site.agent
        assert isinstance(box, InProcessAgent) and site.centre is not None
        [event] = box.press("gym")
        [alarm] = wait_alarms(watch, 1)
        assert alarm["event_id"] == event["event_id"]
        wait_for(lambda: stored == [event["event_id"]], 10, "the alarm stored at the centre")
        assert site.centre.received_ids() == {event["event_id"]}
    assert not _running(tmp_path / "broker")


def test_school_config_changes_one_item_of_a_list_by_its_id(tmp_path: Path) -> None:
    path = school_config(
        tmp_path / "agent.yaml",
        port=1883,
        storage=tmp_path / "state",
        buttons={"gym": {"location": "Спортзал"}},
    )
    buttons = {b.id: b for b in load_config(path).buttons}
    assert buttons["gym"].location == "Спортзал"
    assert buttons["entrance"].location == "Main entrance, ground floor"  # the others as they were
    assert len(buttons) == 4
    path = school_config(
        tmp_path / "video.yaml",
        port=1883,
        storage=tmp_path / "state",
        cameras={"entrance-cam": {"post_alarm_s": 2}},
    )
    config = load_config(path)
    assert [(c.id, c.pre_alarm_s, c.post_alarm_s) for c in config.cameras] == [
        ("entrance-cam", 5, 2)
    ]
    assert config.cameras_for("entrance") == config.cameras
    with pytest.raises(KeyError, match="pool"):
        school_config(
            tmp_path / "other.yaml",
            port=1883,
            storage=tmp_path / "state",
            buttons={"pool": {"location": "?"}},
        )
