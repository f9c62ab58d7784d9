"""The alarm desk on its own (no broker): what is stored, confirmed, refused and reported, and
when a box's ``test: true`` is believed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.centre.intake import Limits, Reporter
from agent.centre.ledger import Ledger
from agent.centre.receiver import AlarmDesk
from agent.delivery.protocol import Alarm, BoxTopic, Status

SITE = "school-042"


class Desk:
    """An AlarmDesk on a real ledger, its thread replaced by drain() on the test's thread."""

    def __init__(self, store: Path, limits: Limits | None = None) -> None:
        self.store = store
        self.ledger = Ledger.open(store)
        self.sent: list[tuple[str, bytes]] = []
        self.stored: list[dict[str, Any]] = []
        self.desk = AlarmDesk(
            store,
            "schools",
            self.ledger,
            Reporter(self.ledger, 0.0),
            limits or Limits(),
            lambda t, p: self.sent.append((t, p)),
            self.stored.append,
        )

    def send(self, kind: str, payload: bytes, site: str = SITE) -> None:
        self.desk.take(BoxTopic(site, kind), payload)
        self.desk.drain()

    def receipts(self) -> list[str]:
        return [e for _, p in self.sent for e in json.loads(p)["alarms"]]

    def reports(self) -> list[str]:
        return [f"{r.what}: {r.detail}" for r in self.ledger.reports(newest=1000)]


@pytest.fixture
def desk(tmp_path: Path) -> Desk:
    return Desk(tmp_path)


def alarm(seq: int = 1, at: str = "2026-11-25T08:30:00.000Z", **kw: Any) -> Alarm:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "seq": seq,
        "site_id": SITE,
        "button_id": "entrance",
        "location": "Главный вход",
        "kind": "panic",
        "pressed_at": at,
        "clock_synced": True,
        **kw,
    }
    return Alarm(**fields)


def status(at: str, until: str | None, state: str = "online") -> bytes:
    return Status(
        state=state, site_id=SITE, at=at, agent_version="0.1.0", test_mode_until=until
    ).to_json()


def test_an_alarm_is_stored_once_and_confirmed_every_time(desk: Desk) -> None:
    a = alarm()
    desk.send("alarm", a.to_json())
    desk.send("alarm", a.to_json())
    assert [s["event_id"] for s in desk.stored] == [a.event_id]
    assert desk.receipts() == [a.event_id, a.event_id]
    lines = (desk.store / "alarms.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["location"] for x in lines] == ["Главный вход"]


def test_a_refused_alarm_is_reported_without_quoting_it(desk: Desk) -> None:
    bad = json.loads(alarm().to_json()) | {"seq": "zzz", "location": "\x1b]0;pwned\x07"}
    desk.send("alarm", json.dumps(bad).encode())
    desk.send("alarm", alarm(site_id="school-043").to_json())
    assert desk.stored == [] and desk.receipts() == []
    [first, second] = desk.reports()
    assert first.startswith("refused: alarm: bad_field: ") and "pwned" not in first
    assert "an alarm of site school-043 on the topic of school-042" in second


def test_a_resend_with_other_content_keeps_the_first(desk: Desk) -> None:
    a = alarm()
    desk.send("alarm", a.to_json())
    desk.send("alarm", Alarm(**{**json.loads(a.to_json()), "location": "elsewhere"}).to_json())
    assert [s["location"] for s in desk.stored] == ["Главный вход"]
    assert any(r.startswith("alarm_changed") for r in desk.reports())
    assert desk.receipts() == [a.event_id, a.event_id]


def test_a_test_flag_the_site_did_not_announce_is_a_real_alarm(desk: Desk) -> None:
    """Issue 10.8: a box (or an attacker on it) cannot silence an alarm by calling it a test."""
    desk.send("status", status("2026-11-25T08:00:00.000Z", None))
    desk.send("alarm", alarm(test=True).to_json())
    [record] = desk.stored
    assert record["test"] is False and "did not announce" in record["test_refused"]
    assert any(r.startswith("test_not_announced") for r in desk.reports())
    assert json.loads((desk.store / "alarms.jsonl").read_text())["test"] is False


def test_an_announced_walk_test_is_believed_inside_its_window(desk: Desk) -> None:
    desk.send("status", status("2026-11-25T08:00:00.000Z", "2026-11-25T08:30:00.000Z"))
    desk.send("alarm", alarm(1, "2026-11-25T08:10:00.000Z", test=True).to_json())
    desk.send("alarm", alarm(2, "2026-11-25T08:31:00.000Z", test=True).to_json())  # after it
    assert [r["test"] for r in desk.stored] == [True, False]


def test_alarms_queued_during_a_window_stay_tests_after_it_ended(desk: Desk) -> None:
    """The box was offline during its walk test; it returns with test mode off and sends the
    presses it queued: they were tests then, and the window ended at the status's time."""
    desk.send("status", status("2026-11-25T08:00:00.000Z", "2026-11-25T08:30:00.000Z"))
    desk.send("status", status("2026-11-25T08:05:00.000Z", None, state="offline"))
    desk.send("status", status("2026-11-25T08:20:00.000Z", None))  # back, test mode off
    desk.send("alarm", alarm(1, "2026-11-25T08:10:00.000Z", test=True).to_json())
    desk.send("alarm", alarm(2, "2026-11-25T08:21:00.000Z", test=True).to_json())
    assert [r["test"] for r in desk.stored] == [True, False]


def test_a_walk_test_longer_than_a_box_allows_is_cut(desk: Desk) -> None:
    desk.send("status", status("2026-11-25T08:00:00.000Z", "2027-01-01T00:00:00.000Z"))
    assert desk.ledger.test_windows([SITE]) == {SITE: "2026-11-25T12:00:00.000Z"}
    assert any(r.startswith("test_too_long") for r in desk.reports())


def test_one_sites_flood_waits_behind_itself_and_its_disk_budget_is_its_own(tmp_path: Path) -> None:
    size = len(alarm().to_json())
    desk = Desk(tmp_path, Limits(alarm_bytes_per_day=1, alarm_burst_bytes=5 * size + 10))
    flood = [alarm(i + 1) for i in range(20)]
    for a in flood:
        desk.desk.take(BoxTopic(SITE, "alarm"), a.to_json())
    honest = Alarm(**{**json.loads(alarm().to_json()), "site_id": "school-001"})
    desk.send("alarm", honest.to_json(), site="school-001")
    sites = [s["site_id"] for s in desk.stored]
    assert sites == [SITE, "school-001", SITE, SITE, SITE, SITE]  # 5 of 20; the honest 2nd
    assert any(r.startswith("alarm_budget") for r in desk.reports())
    desk.send("alarm", flood[0].to_json())  # a duplicate costs nothing: still confirmed
    assert desk.receipts().count(flood[0].event_id) == 2


def test_alarms_that_arrived_together_are_stored_in_one_commit_before_any_receipt(
    desk: Desk,
) -> None:
    """Group commit: one ledger transaction (one fsync) for the alarms that wait together, and
    their receipts only after it; a status between them still applies to the later ones only."""
    commits: list[int] = []
    add_alarms = desk.ledger.add_alarms

    def counting(entries: list[Any], now: float | None = None) -> Any:
        waiting = {a.event_id for a, _payload, _test in entries}
        assert not waiting & set(desk.receipts()), "a receipt went out before its alarm's commit"
        commits.append(len(entries))
        return add_alarms(entries, now)

    desk.ledger.add_alarms = counting  # type: ignore[method-assign]
    before = [alarm(seq=i, test=True) for i in (1, 2, 3)]
    after = alarm(seq=4, test=True)
    for a in before:
        desk.desk.take(BoxTopic(SITE, "alarm"), a.to_json())
    desk.desk.take(
        BoxTopic(SITE, "status"), status("2026-11-25T08:00:00.000Z", "2026-11-25T09:00:00.000Z")
    )
    desk.desk.take(BoxTopic(SITE, "alarm"), after.to_json())
    assert desk.desk.drain() == 5
    assert commits == [3, 1]
    assert desk.receipts() == [a.event_id for a in [*before, after]]
    assert [r["test"] for r in desk.stored] == [False, False, False, True]  # announced after 3
    lines = (desk.store / "alarms.jsonl").read_text().splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [1, 2, 3, 4]
