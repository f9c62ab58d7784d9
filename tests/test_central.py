"""The centre's receiver: its ledger (dedup, site states, seq gaps) and shared load."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.central import run_receiver
from agent.delivery.protocol import Alarm
from agent.ledger import Ledger
from agent.mosquitto import Mosquitto
from tests.conftest import AgentProcess, Centre, cli, wait_for


def _alarm(seq: int, event: str | None = None) -> Alarm:
    return Alarm(event_id=event or f"ev-{seq}", seq=seq, site_id="s1", button_id="b",
                 location="hall", kind="panic", pressed_at="2026-11-25T08:00:00.000Z",
                 clock_synced=True)


def test_ledger_dedups_and_finds_and_closes_gaps(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    a1 = _alarm(1)
    assert ledger.add_alarm(a1, a1.to_json()).new
    assert not ledger.add_alarm(a1, a1.to_json()).new  # the same event again
    a4 = _alarm(4)
    stored = ledger.add_alarm(a4, a4.to_json())
    assert stored.gap_opened == (2, 3)
    assert ledger.gaps() == {"s1": [2, 3]}
    a2 = _alarm(2)
    assert ledger.add_alarm(a2, a2.to_json()).gap_closed  # a late resend fills the gap
    assert ledger.gaps() == {"s1": [3]}
    assert [a["seq"] for a in ledger.alarms("s1")] == [1, 2, 4]


def test_ledger_records_when_a_site_changed_state(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    assert ledger.site_status("s1", {"state": "online"}, now=100.0)
    assert not ledger.site_status("s1", {"state": "online"}, now=200.0)
    assert ledger.site_status("s1", {"state": "offline"}, now=300.0)
    [(site, state, since)] = ledger.sites()
    assert (site, state) == ("s1", "offline") and since.startswith("1970-01-01T00:05:00")


def test_centre_status_shows_a_site_going_offline(agent_process: AgentProcess,
                                                  broker: Mosquitto, tmp_path: Path) -> None:
    centre = Centre(broker, tmp_path / "centre").start()
    try:
        agent_process.start()
        status = lambda: cli("central", "--store", str(tmp_path / "centre"), "status").stdout  # noqa: E731
        wait_for(lambda: "sim-school" in status() and "online" in status(), 10, "online")
        agent_process.kill()
        wait_for(lambda: "offline" in status(), 15, "offline via the will")
    finally:
        centre.stop()


def test_two_receivers_share_the_alarms_each_handled_once(agent_process: AgentProcess,
                                                          broker: Mosquitto,
                                                          tmp_path: Path) -> None:
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=run_receiver, daemon=True, kwargs={
        "broker": broker.url, "topic_prefix": "schools", "store": tmp_path / f"centre{i}",
        "client_id": f"centre-{i}", "stop": stops[i], "share": "centre"}) for i in range(2)]
    for t in threads:
        t.start()
    try:
        agent_process.start()
        wait_for(lambda: all((tmp_path / f"centre{i}" / "centre.db").exists() for i in range(2)),
                 5, "both receivers up")
        for i in range(12):
            agent_process.press(("entrance", "gym")[i % 2])

        def stored() -> list[list[int]]:
            out = []
            for i in range(2):
                ledger = Ledger.open(tmp_path / f"centre{i}")
                out.append([a["seq"] for a in ledger.alarms()])
                ledger.close()
            return out

        wait_for(lambda: sum(map(len, stored())) == 12, 15, "all 12 alarms stored")
        first, second = stored()
        assert not set(first) & set(second), "an alarm was handled by both receivers"
        assert sorted(first + second) == list(range(1, 13))
        assert first and second, "the load was not shared"
        wait_for(lambda: (agent_process.status() or {})["outbox"]["unconfirmed"] == 0, 10,
                 "every alarm confirmed")
        stops[0].set()  # one receiver leaves: the box must still see a centre listening
        threads[0].join(5)
        agent_process.press("entrance")
        wait_for(lambda: (agent_process.status() or {})["outbox"]["unconfirmed"] == 0
                 and len(stored()[1]) == len(second) + 1, 10, "the other receiver took it")
        assert (agent_process.status() or {})["uplink"]["centre"] == "listening"
    finally:
        for s in stops:
            s.set()
        for t in threads:
            t.join(5)
