"""The centre's ledger: alarms once per (site, event), gaps, evidence never replaced, a version 1
file migrated without losing a row, and what the centre reports about its own connections."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.centre.ledger import Ledger
from agent.centre.ledgerrecords import REPORTS_PER_SITE
from agent.delivery.protocol import Alarm
from agent.errors import AgentError


def _alarm(seq: int, event: str | None = None, site: str = "s1", **kw: object) -> Alarm:
    fields: dict[str, object] = {
        "event_id": event or f"ev-{seq}",
        "seq": seq,
        "site_id": site,
        "button_id": "b",
        "location": "hall",
        "kind": "panic",
        "pressed_at": "2026-11-25T08:00:00.000Z",
        "clock_synced": True,
        **kw,
    }
    return Alarm(**fields)  # type: ignore[arg-type]


def _add(ledger: Ledger, alarm: Alarm) -> bool:
    return ledger.add_alarm(alarm, alarm.to_json(), alarm.test).new


def test_ledger_dedups_and_finds_and_closes_gaps(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    a1 = _alarm(1)
    assert _add(ledger, a1)
    assert not _add(ledger, a1)  # the same event again
    a4 = _alarm(4)
    stored = ledger.add_alarm(a4, a4.to_json(), False)
    assert stored.gap_opened == (2, 3)
    assert ledger.gaps() == {"s1": [2, 3]}
    a2 = _alarm(2)
    assert ledger.add_alarm(a2, a2.to_json(), False).gap_closed  # a late resend fills the gap
    assert ledger.gaps() == {"s1": [3]}
    assert [a["seq"] for a in ledger.alarms("s1")] == [1, 2, 4]


def test_the_same_event_id_at_two_sites_is_two_alarms(tmp_path: Path) -> None:
    """Issue 10.6: a box that learnt another school's event id cannot make it a duplicate."""
    ledger = Ledger.open(tmp_path)
    assert _add(ledger, _alarm(1, "shared", site="hostile"))
    assert _add(ledger, _alarm(5, "shared", site="honest"))
    assert ledger.sites_of("shared") == ["honest", "hostile"]
    changed = _alarm(1, "shared", site="hostile", location="elsewhere")
    stored = ledger.add_alarm(changed, changed.to_json(), False)
    assert not stored.new and stored.differs  # kept the first; the caller reports it


def test_a_strict_table_refuses_a_text_seq(tmp_path: Path) -> None:
    """Issue 10.2: the second wall behind the schema."""
    ledger = Ledger.open(tmp_path)
    with pytest.raises(sqlite3.IntegrityError):
        ledger.add_alarm(_alarm("zzz"), b"{}", False)  # type: ignore[arg-type]
    assert _add(ledger, _alarm(1))


def test_a_clip_is_recorded_once(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    assert ledger.add_clip("s1", "ev", "cam", tmp_path / "a.ts", 10, "f" * 64, ["a" * 64], "")
    assert not ledger.add_clip(
        "s1", "ev", "cam", tmp_path / "b.ts", 20, "0" * 64, ["b" * 64], "forged"
    )
    record = ledger.clip("s1", "ev", "cam")
    assert record is not None and record.manifest == ("a" * 64,) and record.problem == ""
    assert ledger.clip("s2", "ev", "cam") is None  # keyed by site too


def test_a_version_1_ledger_is_migrated_and_a_poisoned_site_recovers(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "centre.db")
    conn.executescript("""
        CREATE TABLE alarms (event_id TEXT PRIMARY KEY, site_id TEXT NOT NULL, seq INTEGER NOT
            NULL, button_id TEXT NOT NULL, kind TEXT NOT NULL, test INTEGER NOT NULL, pressed_at
            TEXT NOT NULL, received_at TEXT NOT NULL, payload TEXT NOT NULL);
        CREATE INDEX alarms_site_seq ON alarms (site_id, seq);
        CREATE TABLE sites (site_id TEXT PRIMARY KEY, state TEXT NOT NULL, changed_at TEXT NOT
            NULL, status TEXT NOT NULL);
        CREATE TABLE gaps (site_id TEXT NOT NULL, seq INTEGER NOT NULL, detected_at TEXT NOT
            NULL, PRIMARY KEY (site_id, seq));
        CREATE TABLE clips (event_id TEXT NOT NULL, camera_id TEXT NOT NULL, site_id TEXT NOT
            NULL, path TEXT NOT NULL, segments INTEGER NOT NULL, written_at TEXT NOT NULL,
            verified INTEGER NOT NULL, problem TEXT NOT NULL, PRIMARY KEY (event_id, camera_id));
        INSERT INTO alarms VALUES ('e1', 's1', 1, 'b', 'panic', 0, 't', 't', '{"seq":1}');
        INSERT INTO alarms VALUES ('e2', 's1', 'zzz', 'b', 'panic', 0, 't', 't', '{"seq":"zzz"}');
        INSERT INTO sites VALUES ('s1', 'online', 't', '{}');
        INSERT INTO clips VALUES ('e1', 'cam', 's1', '/x.ts', 3, 't', 1, '');
    """)
    conn.commit()
    conn.close()
    ledger = Ledger.open(tmp_path)
    assert ledger.alarms("s1") == [{"seq": 1}]
    assert ledger.sites() == [("s1", "online", "t")]
    assert ledger.clip_problem("s1", "e1", "cam") == ""
    assert not ledger.add_alarm(_alarm(2), _alarm(2).to_json(), False).gap_opened
    ledger.close()
    conn = sqlite3.connect(tmp_path / "centre.db")
    assert conn.execute("SELECT COUNT(*) FROM legacy_alarms").fetchone() == (2,)  # kept
    conn.close()
    Ledger.open(tmp_path).close()  # a second open does not migrate again


def test_reports_keep_the_newest_of_each_site(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    ledger.report("quiet", "refused", "one")
    for i in range(REPORTS_PER_SITE + 50):
        ledger.report("noisy", "refused", f"#{i}")
    noisy = ledger.reports("noisy", newest=10_000)
    assert len(noisy) == REPORTS_PER_SITE and noisy[-1].detail == f"#{REPORTS_PER_SITE + 49}"
    assert [r.detail for r in ledger.reports("quiet")] == ["one"]  # not pushed out by another


def test_links_remember_when_the_broker_was_lost_and_regained(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    ledger.link_changed("rx", "alarms", True, now=100.0)
    ledger.link_changed("rx", "alarms", False, "connection lost", now=200.0)
    ledger.link_changed("rx", "alarms", True, now=201.5)
    [link] = ledger.links()
    assert (link.up, link.outages, link.last_error) == (True, 1, "")
    assert link.lost_at == "1970-01-01T00:03:20.000Z"
    assert link.regained_at == "1970-01-01T00:03:21.500Z"
    ledger.link_changed("rx", "alarms", False, "receiver stopped", now=300.0, outage=False)
    [link] = ledger.links()
    assert (link.up, link.outages, link.lost_at) == (False, 1, "1970-01-01T00:03:20.000Z")


def test_a_corrupt_ledger_is_reported_by_a_reader_and_moved_aside_by_the_receiver(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``central status`` beside a running receiver must not pull the file from under it; the
    receiver, its one writer, starts a clean one rather than refusing every school's alarms."""
    (tmp_path / "centre.db").write_bytes(b"torn" * 2000)
    with pytest.raises(AgentError, match=r"ledger .* is corrupt"):
        Ledger.open(tmp_path)
    assert not list(tmp_path.glob("centre.db.corrupt-*"))
    ledger = Ledger.open(tmp_path, recover=True)
    assert _add(ledger, _alarm(1))
    assert [p.read_bytes() for p in tmp_path.glob("centre.db.corrupt-*")] == [b"torn" * 2000]
    assert "alarms.jsonl" in caplog.text
