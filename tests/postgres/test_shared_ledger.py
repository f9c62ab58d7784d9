"""Several receivers on one PostgreSQL ledger: each alarm stored once by (site, event) however
they race, and a receiver killed during a burst loses none of it."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

import psycopg

from agent.centre.pgledger import PgLedger
from agent.clock import rfc3339
from agent.delivery.protocol import Alarm
from agent.testing.broker import Mosquitto
from agent.testing.central import CentralProcess
from agent.testing.mqtt import MqttClient, Receipts
from tests.conftest import wait_for


def _alarms(count: int, sites: int) -> list[Alarm]:
    return [
        Alarm(
            str(uuid.uuid4()),
            i // sites + 1,
            f"school-{i % sites:03d}",
            "entrance",
            "Главный вход",
            "panic",
            rfc3339(time.time()),
            True,
        )
        for i in range(count)
    ]


def _count(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (site_id, event_id)) FROM alarms"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_the_same_alarms_from_two_receivers_at_once_are_stored_once(ledger_url: str) -> None:
    alarms = _alarms(300, 30)
    ledgers = [PgLedger.open(ledger_url), PgLedger.open(ledger_url)]
    new: list[int] = []

    def store(ledger: PgLedger, seed: int) -> None:
        mine = alarms[:]
        random.Random(seed).shuffle(mine)  # each receiver sees them in its own order
        for start in range(0, len(mine), 25):  # in groups, as group commit stores them
            stored = ledger.add_alarms([(a, a.to_json(), False) for a in mine[start : start + 25]])
            new.append(sum(s.new for s in stored))

    threads = [
        threading.Thread(target=store, args=(ledger, seed)) for seed, ledger in enumerate(ledgers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "the receivers deadlocked"
    assert sum(new) == 300 and _count(ledger_url) == (300, 300)
    assert ledgers[0].gaps() == {}  # seq bookkeeping did not interleave
    for ledger in ledgers:
        ledger.close()


def _receiver(broker: Mosquitto, url: str, store: Path, name: str) -> CentralProcess:
    return CentralProcess(broker.url, store, name, "--ledger", url, "--min-free-gb", "0").start()


def test_a_receiver_killed_during_a_burst_loses_none(
    tmp_path: Path, broker: Mosquitto, ledger_url: str
) -> None:
    # The receipts are read by mosquitto_sub (Receipts): it keeps up with 1,200 of them, and it
    # stands for the schools' many connections.
    receipts = Receipts(broker.port).start()
    schools = MqttClient(broker.port).connect()
    one = _receiver(broker, ledger_url, tmp_path / "one", "receiver-one")
    two = _receiver(broker, ledger_url, tmp_path / "two", "receiver-two")
    try:
        wait_for(lambda: {"receiver-one", "receiver-two"} <= receipts.online, 20, "both receivers")
        alarms = _alarms(600, 60)
        for i, alarm in enumerate(alarms):
            schools.send(f"schools/{alarm.site_id}/alarm", alarm.to_json())
            if i == 200:
                one.kill()  # in the middle of the burst
        wait_for(lambda: _count(ledger_url)[0] >= 600, 30, "every alarm in the shared ledger")
        wait_for(
            lambda: {a.event_id for a in alarms} <= receipts.confirmed.keys(),
            30,
            "a receipt for each",
        )
        one = _receiver(broker, ledger_url, tmp_path / "one", "receiver-one")  # back: its
        time.sleep(3)  # session's queue is replayed, and finds every alarm stored already
        assert _count(ledger_url) == (600, 600)
    finally:
        for receiver in (one, two):
            receiver.kill()
        schools.close()
        receipts.stop()
