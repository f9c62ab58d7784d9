"""The DC-09 path's queue in the outbox: one commit with the alarm, acknowledged apart from it,
durable through kill -9, held in memory when the disk refuses, a bad row set aside, and an
outbox made before the DC-09 table."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.delivery.dc09.events import Event, EventKind
from agent.delivery.dc09_queue import KEEP_REFUSED, OutboxEventQueue
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Priority
from tests.conftest import REPO, Refusing

OLD_OUTBOX = Path(__file__).parent / "data" / "outbox-7ed4fb4.sql"
AT = 1_760_000_000.0


def _press(
    box: Outbox, q: OutboxEventQueue, key: str, zone: int = 1, kind: EventKind = EventKind.PANIC
) -> tuple[int, bool]:
    return box.add_alarm(
        "s/x/alarm",
        key,
        lambda s: f'{{"seq":{s}}}'.encode(),
        also=q.row(Event(kind, zone, f"Кабинет {zone}"), AT, key),
    )


def _sent(q: OutboxEventQueue) -> list[tuple[str, int]]:
    """Drain the queue as the transmitter does, every event acknowledged."""
    out = []
    while (item := q.next_event()) is not None:
        out.append((str(item.event.kind), item.event.zone))
        q.acked(item.id)
    return out


@pytest.fixture
def box(tmp_path: Path) -> Outbox:
    return Outbox.open(tmp_path / "outbox.db")


def test_an_alarm_and_its_dc09_event_are_acknowledged_each_by_its_own_path(box: Outbox) -> None:
    q = OutboxEventQueue(box)
    assert _press(box, q, "a1", zone=7) == (1, True)
    assert [m.key for m in box.next_batch([], 10, Priority.CLIP)] == ["a1"]
    item = q.next_event()
    assert item is not None and item.event == Event(EventKind.PANIC, 7, "Кабинет 7")
    assert q.next_event() == item  # the same one until it is done
    box.confirm(["a1"])  # the centre's receipt: the MQTT row goes, the DC-09 one stays
    assert box.next_batch([], 10, Priority.CLIP) == [] and q.depth() == 1
    _press(box, q, "a2", zone=8)
    q.acked(item.id)  # the receiver's ACK: the DC-09 row goes, the other alarm's stays
    assert [m.key for m in box.next_batch([], 10, Priority.CLIP)] == ["a2"]
    assert _sent(q) == [("panic", 8)]
    assert q.depth() == 0 and box.depth()["alarm"] == 1


def test_alarms_go_before_troubles_and_tests_oldest_first(box: Outbox) -> None:
    q = OutboxEventQueue(box)
    q.add(Event(EventKind.PATH_FAIL, 1), AT, mqtt_down=True)
    _press(box, q, "stuck", 3, EventKind.STUCK)
    _press(box, q, "p1", 1)
    q.add(Event(EventKind.PANIC_RESTORE, 1), AT)
    _press(box, q, "h2", 2, EventKind.HOLDUP)
    assert _sent(q) == [
        ("panic", 1),
        ("panic_restore", 1),
        ("holdup", 2),
        ("path_fail", 1),
        ("stuck", 3),
    ]


def test_one_transaction_kill_9_leaves_both_rows_or_neither(tmp_path: Path) -> None:
    """A child commits a press (both rows) and is SIGKILLed at once: both are there."""
    db = tmp_path / "outbox.db"
    code = (
        "import os, signal; from pathlib import Path\n"
        "from agent.delivery.outbox import Outbox\n"
        "from agent.delivery.dc09_queue import OutboxEventQueue\n"
        "from agent.delivery.dc09.events import Event, EventKind\n"
        f"box = Outbox.open(Path({str(db)!r})); q = OutboxEventQueue(box)\n"
        "box.add_alarm('t', 'k', lambda s: b'p', also=q.row(Event(EventKind.PANIC, 4), 1.0, 'k'))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == -9
    box = Outbox.open(db)
    assert box.integrity_ok()
    assert [m.key for m in box.next_batch([], 10, Priority.CLIP)] == ["k"]
    assert _sent(OutboxEventQueue(box)) == [("panic", 4)]


def test_a_failing_dc09_insert_fails_the_alarms_commit_too(box: Outbox) -> None:
    """Neither without the other: the DC-09 row's insert fails (its table is gone), so the
    alarm's commit rolls back; both are held in memory and both still go out."""
    q = OutboxEventQueue(box)
    box.transaction(lambda conn: conn.execute("ALTER TABLE dc09 RENAME TO gone"))
    seq, durable = _press(box, q, "a1", zone=5)
    assert (seq, durable) == (1, False)
    assert box.query(lambda c: c.execute("SELECT COUNT(*) FROM messages").fetchone()[0]) == 0
    assert [m.key for m in box.next_batch([], 10, Priority.CLIP)] == ["a1"]  # from memory
    assert _sent(q) == [("panic", 5)]


def test_held_in_memory_while_the_disk_refuses_then_written_first(box: Outbox) -> None:
    q = OutboxEventQueue(box)
    _press(box, q, "before", 1)
    real = box._conn
    box._conn = Refusing(real)  # type: ignore[assignment]
    assert not _press(box, q, "during", 2)[1]
    assert not q.add(Event(EventKind.TEST_START, 0), AT)
    first = q.next_event()
    assert first is not None and first.event.zone == 1
    q.acked(first.id)  # its delete fails: remembered, so it is not sent again
    assert q.depth() == 2
    held = q.next_event()
    assert held is not None and held.id < 0 and held.event.zone == 2
    box._conn = real  # the disk is back: the next write puts the held events on disk first
    _press(box, q, "after", 3)
    ids = box.query(lambda c: [r[0] for r in c.execute("SELECT zone FROM dc09 ORDER BY id")])
    assert ids == [1, 2, 0, 3]  # the acked one is still there, deleted with the next write
    q.acked(held.id)  # the transmitter had it from memory: its row on disk goes
    assert _sent(q) == [("panic", 3), ("test_start", 0)]
    assert box.query(lambda c: c.execute("SELECT COUNT(*) FROM dc09").fetchone()[0]) == 0


def test_the_spools_budget_never_takes_a_dc09_row(box: Outbox) -> None:
    """The daemon drops whole clips, oldest first, to stay within storage.max_gb: never an
    alarm, and never a DC-09 event (its rows are not in the table clips are dropped from)."""
    q = OutboxEventQueue(box)
    _press(box, q, "ev-old", 1)
    for event in ("ev-old", "ev-new"):
        box.add(Priority.CLIP, "c", f"{event}/cam/0/0", b"x" * 1000)
    assert box.drop_oldest_clip(keep="ev-new") == "ev-old"
    assert _sent(q) == [("panic", 1)]


def test_refused_is_kept_listed_never_resent(box: Outbox) -> None:
    q = OutboxEventQueue(box)
    _press(box, q, "a1", 1, EventKind.HOLDUP)
    _press(box, q, "a2", 2)
    item = q.next_event()
    assert item is not None
    q.refused(item.id, "rx answered DUH to holdup zone 1")
    assert _sent(q) == [("panic", 2)]
    count, [refused] = q.refusals()
    assert count == 1
    assert (refused.kind, refused.zone, refused.at, refused.event_id) == ("holdup", 1, AT, "a1")
    assert "DUH" in refused.reason
    for i in range(KEEP_REFUSED + 5):  # a receiver refusing everything must not fill the disk
        q.add(Event(EventKind.WALK_TEST, 3), AT + i)
        nxt = q.next_event()
        assert nxt is not None
        q.refused(nxt.id, "DUH")
    count, newest = q.refusals(limit=2)
    assert count == KEEP_REFUSED and [r.at for r in newest] == [
        AT + KEEP_REFUSED + 4,
        AT + KEEP_REFUSED + 3,
    ]


def test_a_row_that_is_not_an_event_is_set_aside_not_raised(box: Outbox) -> None:
    q = OutboxEventQueue(box)
    box.transaction(
        lambda c: c.executemany(
            "INSERT INTO dc09 (priority, kind, zone, location, at) VALUES (0, ?, ?, '', 0)",
            [("a_kind_from_a_newer_agent", 1), ("panic", 5000), ("panic", "nine")],
        )
    )
    _press(box, q, "good", 9)
    assert _sent(q) == [("panic", 9)]
    count, rows = q.refusals(limit=10)
    assert count == 3 and all("not a DC-09 event" in r.reason for r in rows)


def test_the_mqtt_paths_reported_state_survives_a_restart(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.db")
    assert not OutboxEventQueue(box).mqtt_down()
    OutboxEventQueue(box).add(Event(EventKind.PATH_FAIL, 1), AT, mqtt_down=True)
    box.close()
    box = Outbox.open(tmp_path / "outbox.db")
    q = OutboxEventQueue(box)
    assert q.mqtt_down()
    q.add(Event(EventKind.PATH_RESTORE, 1), AT, mqtt_down=False)
    assert not OutboxEventQueue(box).mqtt_down()


def test_an_outbox_made_before_the_dc09_table_opens_and_sends_what_it_holds(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    old = sqlite3.connect(db)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(OLD_OUTBOX.read_text())
    old.close()
    box = Outbox.open(db)
    assert box.recovered_from is None
    assert box.depth() == {"alarm": 1, "control": 1, "live": 0, "clip": 0, "unconfirmed": 1}
    assert [box.get(i).seq for i in box.delivered()] == [1]  # type: ignore[union-attr]
    [alarm, result] = box.next_batch([], 10, Priority.CLIP)
    assert (alarm.seq, alarm.key) == (2, "22222222-2222-4222-8222-222222222222")
    assert b'"button_id":"gym"' in alarm.payload and result.key == "result/abc"
    q = OutboxEventQueue(box)
    assert q.depth() == 0 and q.next_event() is None
    assert _press(box, q, "new", 4) == (3, True)  # seq goes on, the DC-09 row beside it
    assert _sent(q) == [("panic", 4)]


@pytest.mark.parametrize("answer", ["ACK", "DUH"])
def test_a_held_event_answered_while_it_is_being_written_is_not_sent_again(
    box: Outbox, answer: str
) -> None:
    """The transmitter may send a held event from memory while another thread's commit moves
    it to disk: its ACK (or DUH) must apply to the row on disk too."""
    q = OutboxEventQueue(box)
    real = box._conn
    box._conn = Refusing(real)  # type: ignore[assignment]
    q.add(Event(EventKind.TEST_START, 0), AT)
    box._conn = real
    held = q.next_event()
    assert held is not None and held.id < 0
    row = q.row(Event(EventKind.PANIC, 6), AT, "a")

    def tx(conn: sqlite3.Connection) -> None:
        row.insert(conn)  # the held event is written first...
        if answer == "ACK":  # ...and answered before the commit
            q.acked(held.id)
        else:
            q.refused(held.id, "DUH")

    box.transaction(tx, committed=lambda _: row.committed())
    assert _sent(q) == [("panic", 6)]
    assert q.depth() == 0
    assert q.refusals()[0] == (answer == "DUH")
