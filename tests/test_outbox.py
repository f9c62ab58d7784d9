"""The durable outbox on a real file system: order, seq, durability, corruption, and a file
made by an older agent."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.delivery.outbox import BlobRef, Outbox
from agent.delivery.protocol import Priority, Topics
from agent.delivery.uplink.link import Uplink
from agent.testing.broker import Mosquitto
from tests.conftest import Refusing, subscriber, wait_for
from tests.test_uplink import _mqtt


def _alarm(box: Outbox, key: str) -> int:
    seq, durable = box.add_alarm("s/x/alarm", key, lambda s: f'{{"seq":{s}}}'.encode())
    assert durable
    return seq


def test_priority_order_then_fifo(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "o.db")
    box.add(Priority.CLIP, "c", "clip-1", b"c1")
    box.add(Priority.CONTROL, "r", "res-1", b"r1")
    _alarm(box, "a1")
    box.add(Priority.CLIP, "c", "clip-2", b"c2")
    _alarm(box, "a2")
    keys = [m.key for m in box.next_batch([], 10, Priority.CLIP)]
    assert keys == ["a1", "a2", "res-1", "clip-1", "clip-2"]
    assert [m.key for m in box.next_batch([], 10, Priority.ALARM)] == ["a1", "a2"]


def test_seq_strictly_increases_across_reopen_and_acks(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "o.db")
    seqs = [_alarm(box, f"a{i}") for i in range(3)]
    for m in box.next_batch([], 10, Priority.ALARM):
        box.ack(m.id)
    box.close()
    box = Outbox.open(tmp_path / "o.db")
    seqs += [_alarm(box, "a3")]
    assert seqs == [1, 2, 3, 4]
    assert box.depth()["alarm"] == 1


def test_duplicate_key_is_ignored(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "o.db")
    assert box.add(Priority.CLIP, "c", "same", b"1")
    assert not box.add(Priority.CLIP, "c", "same", b"2")
    assert box.depth()["clip"] == 1


def test_alarm_survives_kill_9_right_after_commit(tmp_path: Path) -> None:
    """A child commits an alarm and is SIGKILLed at once: the row is there on reopen."""
    db = tmp_path / "o.db"
    code = (
        "import os, signal, sys; from pathlib import Path\n"
        "from agent.delivery.outbox import Outbox\n"
        f"box = Outbox.open(Path({str(db)!r}))\n"
        "box.add_alarm('t', 'k', lambda s: b'payload')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    assert proc.returncode == -9
    box = Outbox.open(db)
    assert box.integrity_ok()
    [msg] = box.next_batch([], 10, Priority.CLIP)
    assert (msg.key, msg.payload) == ("k", b"payload")


def test_corrupt_file_is_moved_aside_and_a_clean_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "o.db"
    db.write_bytes(b"this is not sqlite" * 100)
    box = Outbox.open(db)
    assert _alarm(box, "a") == 1
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside and aside[0].read_bytes().startswith(b"this is not sqlite")
    assert "corrupt" in caplog.text


def test_truncated_file_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    box = Outbox.open(db)
    for i in range(50):
        box.add(Priority.CLIP, "c", f"k{i}", os.urandom(2000))
    box.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    box = Outbox.open(db)
    assert box.integrity_ok()
    assert _alarm(box, "after") >= 1


def test_blob_messages_read_their_bytes_at_send_time(tmp_path: Path) -> None:
    spool = tmp_path / "seg.ts"
    spool.write_bytes(b"0123456789")
    box = Outbox.open(tmp_path / "o.db")
    box.add(Priority.CLIP, "c", "chunk", b"HEAD\n", blob=BlobRef(spool, 2, 5))
    [msg] = box.next_batch([], 1, Priority.CLIP)
    assert msg.payload == b"HEAD\n23456"
    spool.unlink()  # the spool lost the file: the chunk is dropped, not sent broken
    box.add(Priority.CLIP, "c", "chunk2", b"H\n", blob=BlobRef(spool, 0, 5))
    assert [m.key for m in box.next_batch([msg.id], 5, Priority.CLIP)] == []


def test_dropping_the_oldest_clip_takes_all_its_chunks_never_alarms(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "o.db")
    _alarm(box, "alarm")
    for event in ("ev-old", "ev-new"):
        for cam in ("cam1", "cam2"):
            for i in range(3):
                box.add(Priority.CLIP, "c", f"{event}/{cam}/0/{i}", b"x" * 1000)
    assert box.drop_oldest_clip(keep="ev-new") == "ev-old"
    keys = [m.key for m in box.next_batch([], 20, Priority.CLIP)]
    assert keys[0] == "alarm" and all(k.startswith("ev-new/") for k in keys[1:])
    assert len(keys) == 7
    assert box.drop_oldest_clip(keep="ev-new") is None  # the clip being recorded stays
    box.add(Priority.CLIP, "c", "ev-newer/cam1/0/0", b"x")
    assert box.drop_oldest_clip(keep="ev-new") is None  # a newer clip is never dropped for it


def test_disk_refusing_writes_keeps_alarms_in_memory(tmp_path: Path) -> None:
    """A failing card: sqlite raises on every write. Alarms still come out, seq continues."""
    box = Outbox.open(tmp_path / "o.db")
    assert _alarm(box, "before") == 1

    box._conn = Refusing(box._conn)  # type: ignore[assignment]
    seq, durable = box.add_alarm("t", "during", lambda s: f"{s}".encode())
    assert (seq, durable) == (2, False)
    assert box.disk_error
    keys = [m.key for m in box.next_batch([], 10, Priority.CLIP)]
    assert keys == ["before", "during"]
    mem = next(m for m in box.next_batch([], 10, Priority.ALARM) if m.key == "during")
    box.ack(mem.id)
    assert [m.key for m in box.next_batch([], 10, Priority.CLIP)] == ["before"]


# The outbox as agents before the size column's removal made it: boxes in the field hold
# files like this across an upgrade.
OLD_OUTBOX = Path(__file__).parent / "data" / "outbox-0de7272.sql"


def test_an_outbox_made_by_the_old_schema_opens_and_sends_what_it_holds(
    tmp_path: Path, broker: Mosquitto
) -> None:
    db, spool = tmp_path / "outbox.db", tmp_path / "seg.ts"
    spool.write_bytes(b"0123456789")
    old = sqlite3.connect(db)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(OLD_OUTBOX.read_text())
    old.execute("UPDATE messages SET blob_path = ? WHERE blob_path IS NOT NULL", (str(spool),))
    old.commit()
    old.close()

    box = Outbox.open(db)
    assert box.recovered_from is None and not list(tmp_path.glob("*.corrupt-*"))
    assert box.depth() == {"alarm": 1, "control": 0, "live": 0, "clip": 1, "unconfirmed": 1}
    [unconfirmed] = box.delivered()
    assert box.get(unconfirmed).payload == b'{"seq":2}'  # resent until the centre's receipt
    seq, durable = box.add_alarm(
        "schools/site-a/alarm", "after-upgrade", lambda s: f'{{"seq":{s}}}'.encode()
    )
    assert (seq, durable) == (3, True)  # seq goes on

    col = subscriber(broker.port, "schools/site-a/#", client_id="old-outbox")
    up = Uplink(
        _mqtt(broker.port), Topics("schools", "site-a"), box, lambda state, _r: state.encode()
    )
    up.start()
    try:

        def sent() -> list[tuple[str, bytes]]:
            return [(m.topic, m.payload) for m in col.received() if "/status" not in m.topic]

        wait_for(lambda: len(sent()) >= 3, 10, "the old outbox's messages on the broker")
        assert sent() == [
            ("schools/site-a/alarm", b'{"seq":1}'),
            ("schools/site-a/alarm", b'{"seq":3}'),
            ("schools/site-a/clip/cam", b"HEAD\n23456"),
        ]
    finally:
        up.stop()
        col.close()
    box.close()
    conn = sqlite3.connect(db)
    assert "size" not in {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    conn.close()
