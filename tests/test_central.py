"""The centre's receiver end to end: site states in `central status`, and several receivers."""

from __future__ import annotations

from pathlib import Path

from agent.centre.ledger import Ledger
from agent.testing.broker import Mosquitto
from tests.conftest import AgentProcess, Centre, cli, wait_for


def test_centre_status_shows_a_site_going_offline(
    agent_process: AgentProcess, broker: Mosquitto, tmp_path: Path
) -> None:
    centre = Centre(broker.url, tmp_path / "centre").start()
    try:
        agent_process.start()
        status = lambda: cli("central", "--store", str(tmp_path / "centre"), "status").stdout  # noqa: E731
        wait_for(lambda: "sim-school" in status() and "online" in status(), 10, "online")
        agent_process.kill()
        wait_for(lambda: "offline" in status(), 15, "offline via the will")
    finally:
        centre.stop()


def test_two_receivers_each_store_every_alarm(
    agent_process: AgentProcess, broker: Mosquitto, tmp_path: Path
) -> None:
    """No shared subscription (a box could join the group and absorb alarms, docs/broker.md):
    each receiver has its own session and store, and the box counts the centre present while
    any receiver is."""
    centres = [
        Centre(broker.url, tmp_path / f"centre{i}", client_id=f"centre-{i}") for i in range(2)
    ]
    try:
        for centre in centres:
            centre.start()
        agent_process.start()
        for i in range(6):
            agent_process.press(("entrance", "gym")[i % 2])

        def stored() -> list[list[int]]:
            out = []
            for i in range(2):
                ledger = Ledger.open(tmp_path / f"centre{i}")
                out.append([a["seq"] for a in ledger.alarms()])
                ledger.close()
            return out

        wait_for(lambda: stored() == [list(range(1, 7))] * 2, 15, "all 6 alarms in both")
        wait_for(
            lambda: (agent_process.status() or {})["outbox"]["unconfirmed"] == 0,
            10,
            "every alarm confirmed",
        )
        centres[0].stop()  # one receiver leaves: the box must still see a centre listening
        agent_process.press("entrance")
        wait_for(
            lambda: (
                (agent_process.status() or {})["outbox"]["unconfirmed"] == 0
                and len(stored()[1]) == 7
            ),
            10,
            "the other receiver took it",
        )
        assert (agent_process.status() or {})["uplink"]["centre"] == "listening"
    finally:
        for centre in centres:
            centre.stop()
