"""The agent's storage fails: full, read-only, or an outbox file found corrupt at start-up.

A broken disk must never silence a button: when SQLite cannot write, the outbox holds the
alarm in memory and sends it all the same (agent/delivery/outbox.py: add_alarm, ``durable`` in
the reply of ``simulate``). A corrupt outbox is moved aside and a clean one started, loudly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import sqlite3
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.testing.broker import Mosquitto
from agent.testing.site import AgentProcess
from tests.conftest import wait_for
from tests.fault.conftest import BUTTONS, FaultSite, Mount, fault_seed, fault_site, fill_disk

# --- full -----------------------------------------------------------------------------------------


def test_disk_full_alarm_still_reaches_the_centre(
    tmp_path: Path, broker: Mosquitto, tmpfs: Callable[[str], Mount]
) -> None:
    disk = tmpfs("4m")
    with fault_site("disk_full", tmp_path, broker, storage=disk.path) as site:
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        before = presser.press_n(2)
        tally.wait_delivered(centre, 10)
        filled = fill_disk(disk.path)
        during = presser.press_n(4)
        tally.wait_delivered(centre, 10)
        status = agent.status() or {}
        for f in disk.path.glob("filler*"):
            f.unlink()
        after = presser.press_n(2)
        tally.wait_delivered(centre, 10)
        info = tally.report(
            centre,
            filled_bytes=filled,
            durable_while_full=sum(e["durable"] for e in during),
            held_in_memory=sum(not e["durable"] for e in during),
        )
        tally.assert_ok(info)
        assert all(e["durable"] for e in before + after)
        assert not all(e["durable"] for e in during), "the full disk never refused a write"
        assert status["outbox"]["disk_error"], "status does not show the disk error"
        assert "NOT on disk" in agent.output()


@pytest.mark.parametrize(
    ("name", "cycles"),
    [("disk_full_twice", 2), pytest.param("soak_disk_full", 25, marks=pytest.mark.slow)],
)
def test_disk_full_again_and_again_seq_stays_unique(
    tmp_path: Path, broker: Mosquitto, tmpfs: Callable[[str], Mount], name: str, cycles: int
) -> None:
    disk = tmpfs("4m")
    held = 0
    with fault_site(name, tmp_path, broker, storage=disk.path) as site:
        centre, presser, tally = site.centre, site.presser, site.tally
        presser.press()
        for _ in range(cycles):
            fill_disk(disk.path)
            held += sum(not e["durable"] for e in presser.press_n(2))
            for f in disk.path.glob("filler*"):
                f.unlink()
            presser.press_n(2)
        tally.wait_delivered(centre, 20)
        info = tally.report(centre, cycles=cycles, held_in_memory=held)
        tally.assert_ok(info)


def test_alarm_held_in_memory_keeps_its_place_in_seq_order(
    tmp_path: Path, broker: Mosquitto, tmpfs: Callable[[str], Mount]
) -> None:
    disk = tmpfs("4m")
    with fault_site("disk_full_order", tmp_path, broker, storage=disk.path) as site:
        centre, presser, tally = site.centre, site.presser, site.tally
        presser.press()
        tally.wait_delivered(centre, 10)
        broker.kill()  # nothing leaves the box: the order is decided by the outbox alone
        fill_disk(disk.path)
        held = presser.press_n(2)
        for f in disk.path.glob("filler*"):
            f.unlink()
        stored = presser.press_n(1)
        broker.start()
        tally.wait_delivered(centre, 15)
        info = tally.report(
            centre,
            held_in_memory=sum(not e["durable"] for e in held),
            durable_after=sum(e["durable"] for e in stored),
        )
        assert [e["durable"] for e in held + stored] == [False, False, True]
        tally.assert_ok(info)  # out_of_order must be 0


def test_disk_full_loses_no_dc09_event(
    tmp_path: Path, broker: Mosquitto, tmpfs: Callable[[str], Mount]
) -> None:
    """The DC-09 path through a full disk: its events are held in memory with the alarms and
    sent all the same; the first write after the disk returns puts the held ones on disk, so
    from then on kill -9 loses none of them either."""
    pytest.importorskip("pysiaalarm", reason="pip install -e '.[test]' (pysiaalarm)")
    from pysiaalarm import SIAAccount

    from agent.delivery.dc09.settings import Transport
    from agent.testing.sia import ACCOUNT, SiaReceiver

    rx = SiaReceiver(Transport.TCP, [SIAAccount(ACCOUNT, None)]).start()
    port = rx.port
    disk = tmpfs("4m")
    buttons = [{**b, "number": i} for i, b in enumerate(BUTTONS, start=1)]
    dc09 = {
        "account": ACCOUNT,
        "receivers": [{"host": "127.0.0.1", "port": port}],
        "ack_timeout_s": 0.5,
        "attempts": 1,
        "retry_max_s": 0.5,
        "supervision_s": 10,
        "test_report_s": 0,
    }
    try:
        with fault_site(
            "dc09_disk_full", tmp_path, broker, storage=disk.path, dc09=dc09, buttons=buttons
        ) as site:
            agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
            presser.press_n(2)
            rx.wait(2)
            rx.stop()  # the receiver away too: what the full disk refuses waits in memory
            fill_disk(disk.path)
            during = presser.press_n(3)
            for f in disk.path.glob("filler*"):
                f.unlink()
            after = presser.press_n(1)  # this commit writes the held DC-09 events first
            tally.wait_delivered(centre, 15)
            agent.kill()  # kill -9: only what is on disk survives it
            rx = SiaReceiver(Transport.TCP, [SIAAccount(ACCOUNT, None)], port).start()
            agent.start()
            zones = [int(e.message) for e in rx.wait(4, timeout=15)]
            pressed = [int(e["button_id"][1:]) for e in during + after]
            info = tally.report(
                centre,
                held_in_memory=sum(not e["durable"] for e in during),
                dc09_received=len(zones),
            )
            tally.assert_ok(info)
            assert not all(e["durable"] for e in during), "the full disk never refused a write"
            assert zones == pressed, (zones, pressed)  # every one, in press order, each once
    finally:
        rx.stop()


# --- read-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rounds"),
    [("read_only", 1), pytest.param("soak_read_only", 15, marks=pytest.mark.slow)],
)
def test_storage_turns_read_only_alarms_still_flow(
    tmp_path: Path,
    broker: Mosquitto,
    ext4_loop: Callable[[str], Mount],
    name: str,
    rounds: int,
) -> None:
    card = ext4_loop("16M")
    held = 0
    with fault_site(name, tmp_path, broker, storage=card.path / "edge-agent") as site:
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        presser.press_n(2)
        tally.wait_delivered(centre, 10)
        # What ext4 does on an SD card error with errors=remount-ro; unlike
        # `mount -o remount,ro` it works while SQLite holds the outbox open for writing.
        (card.sysfs() / "trigger_fs_error").write_text("fault test: card failing\n")
        wait_for(lambda: _read_only(card.path), 5, "the kernel to remount the card read-only")
        for _ in range(rounds):
            held += sum(not e["durable"] for e in presser.press_n(2))
            broker.kill()  # held in memory AND the broker gone: they wait for the reconnect
            held += sum(not e["durable"] for e in presser.press_n(2))
            broker.start()
        tally.wait_delivered(centre, 20)
        info = tally.report(centre, rounds=rounds, held_in_memory=held)
        tally.assert_ok(info, in_order=False)
        assert held == 4 * rounds, "a write to a read-only card 'succeeded'"
        assert agent.proc is not None and agent.proc.poll() is None, "the agent died"


def test_alarm_held_in_memory_waits_for_the_centre_receipt(
    tmp_path: Path, broker: Mosquitto, ext4_loop: Callable[[str], Mount]
) -> None:
    card = ext4_loop("16M")
    storage = card.path / "edge-agent"
    with fault_site("read_only_receipt", tmp_path, broker, storage=storage) as site:
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        presser.press()
        tally.wait_delivered(centre, 10)
        (card.sysfs() / "trigger_fs_error").write_text("fault test: card failing\n")
        wait_for(lambda: _read_only(card.path), 5, "the kernel to remount the card read-only")
        centre.stop()  # the centre is away: the broker queues for its persistent session
        wait_for(
            lambda: (agent.status() or {})["uplink"]["centre"] == "NOT listening",
            10,
            "the agent to see the centre go",
        )
        [held] = presser.press()
        assert not held["durable"]
        wait_for(lambda: agent.outbox().get("alarm") == 0, 10, "the PUBACK")
        broker.kill()  # and the broker loses its queue (a new broker, a lost volume)
        for f in broker.workdir.glob("mosquitto.db*"):
            f.unlink()
        broker.start()
        centre.start()
        tally.wait_delivered(centre, 15)
        info = tally.report(centre, held_in_memory=1)
        tally.assert_ok(info)


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32), include/uapi/linux/ext4.h
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def test_failing_card_alarms_still_flow(
    tmp_path: Path, broker: Mosquitto, ext4_loop: Callable[[str], Mount]
) -> None:
    """The card dies outright: every read AND write on it fails with EIO (ext4's shutdown
    ioctl, what a card that drops off the bus looks like). Alarms must still go out."""
    card = ext4_loop("16M")
    storage = card.path / "edge-agent"
    with fault_site("failing_card", tmp_path, broker, storage=storage) as site:
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        presser.press_n(2)
        tally.wait_delivered(centre, 10)
        fd = os.open(card.path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        during = presser.press_n(3)
        tally.wait_delivered(centre, 15)
        info = tally.report(
            centre,
            held_in_memory=sum(not e["durable"] for e in during),
            uplink=agent.uplink_state(),
        )
        tally.assert_ok(info)
        assert agent.proc is not None and agent.proc.poll() is None, "the agent died"


def _read_only(path: Path) -> bool:
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if parts[1] == str(path):
            opts = parts[3].split(",")
            return "ro" in opts or "emergency_ro" in opts
    return False


# --- corrupt ------------------------------------------------------------------------------------


def _stop_cleanly(agent: AgentProcess) -> None:
    """SIGTERM: SQLite checkpoints and removes the WAL, so the main file is the whole outbox."""
    assert agent.kill(signal.SIGTERM) == 0


def _root_page(db: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (page,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    return (int(page) - 1) * int(size)  # the byte offset of that page


def _garbage_header(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(os.urandom(100))


def _truncated_half(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def _truncated_mid_page(db: Path) -> None:
    os.truncate(db, 4096 * 2 + 1000)


def _torn_messages_page(db: Path) -> None:
    offset = _root_page(db, "messages")
    with open(db, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(4096))


CORRUPTIONS = {
    "garbage-header": _garbage_header,
    "truncated-half": _truncated_half,
    "truncated-mid-page": _truncated_mid_page,
    "torn-page": _torn_messages_page,
}


@contextlib.contextmanager
def _corrupted_while_down(
    tmp_path: Path, broker: Mosquitto, name: str, corrupt: Callable[[Path], None]
) -> Iterator[tuple[FaultSite, list[int]]]:
    """Three alarms delivered and confirmed, the agent stopped, its outbox damaged by
    ``corrupt``, the agent started again; the site, and the seqs of the alarms before."""
    with fault_site(name, tmp_path, broker) as site:
        site.presser.press_n(3)
        site.tally.wait_delivered(site.centre, 10)
        wait_for(lambda: site.agent.outbox().get("unconfirmed") == 0, 10, "the receipts")
        seqs_before = [e["seq"] for e in site.tally.acked.values()]
        _stop_cleanly(site.agent)
        corrupt(tmp_path / "state" / "outbox.db")
        site.agent.start()
        yield site, seqs_before


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_outbox_is_moved_aside(tmp_path: Path, broker: Mosquitto, kind: str) -> None:
    with _corrupted_while_down(tmp_path, broker, f"corrupt_{kind}", CORRUPTIONS[kind]) as (site, _):
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        storage = tmp_path / "state"
        aside = sorted(p.name for p in storage.glob("outbox.db.corrupt-*"))
        presser.press_n(2)
        tally.wait_delivered(centre, 10)
        info = tally.report(centre, moved_aside=len(aside) > 0)
        # The clean outbox restarts seq at 1: test_seq_continues_after_a_corrupt_outbox
        tally.assert_ok(info, in_order=False, seq_increasing=False)
        assert aside, f"no outbox.db.corrupt-* in {sorted(os.listdir(storage))}"
        assert "is corrupt" in agent.output() and "started a clean one" in agent.output()
        assert agent.proc is not None and agent.proc.poll() is None


def test_zero_length_outbox_is_reported(tmp_path: Path, broker: Mosquitto) -> None:
    def zero(db: Path) -> None:
        os.truncate(db, 0)

    with _corrupted_while_down(tmp_path, broker, "corrupt_zero-length", zero) as (site, _):
        site.presser.press()
        site.tally.wait_delivered(site.centre, 10)
        info = site.tally.report(site.centre)
        site.tally.assert_ok(info, in_order=False, seq_increasing=False)
        assert "is corrupt" in site.agent.output() or "empty" in site.agent.output()


def test_seq_continues_after_a_corrupt_outbox(tmp_path: Path, broker: Mosquitto) -> None:
    with _corrupted_while_down(tmp_path, broker, "corrupt_seq", _torn_messages_page) as (
        site,
        seqs_before,
    ):
        [event] = site.presser.press()
        site.tally.wait_delivered(site.centre, 10)
        info = site.tally.report(site.centre, seq_before=max(seqs_before), seq_after=event["seq"])
        assert event["seq"] > max(seqs_before), (seqs_before, event["seq"])
        site.tally.assert_ok(info)


@pytest.mark.slow
def test_soak_random_corruptions(tmp_path: Path, broker: Mosquitto, seed: int) -> None:
    """Seeded random damage (garbage at a random offset, or a random truncation), restart,
    press: the agent must come up every time and every new alarm must arrive. Damage that
    SQLite's quick_check cannot see (free pages) is allowed to go unnoticed."""
    name = "soak_corrupt"
    rng = random.Random(fault_seed(name, seed))
    storage = tmp_path / "state"
    moved = 0
    with fault_site(name, tmp_path, broker) as site:
        agent, centre, presser, tally = site.agent, site.centre, site.presser, site.tally
        rounds = 20
        for _ in range(rounds):
            presser.press_n(2)
            tally.wait_delivered(centre, 10)
            wait_for(lambda: agent.outbox().get("unconfirmed") == 0, 10, "the receipts")
            _stop_cleanly(agent)
            db = storage / "outbox.db"
            size = db.stat().st_size
            if rng.random() < 0.3:
                os.truncate(db, rng.randrange(1, size))
            else:
                with open(db, "r+b") as f:
                    f.seek(rng.randrange(0, size))
                    f.write(rng.randbytes(rng.choice([1, 16, 512, 4096])))
            agent.start()
            moved = len(list(storage.glob("outbox.db.corrupt-*")))
        presser.press()
        tally.wait_delivered(centre, 10)
        info = tally.report(centre, seed=seed, rounds=rounds, moved_aside=moved)
        tally.assert_ok(info, in_order=False, no_gaps=False, seq_increasing=False)
