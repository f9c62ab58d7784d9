"""A centre with two receivers and two consoles on one PostgreSQL: each alarm appears once on
both consoles, and an acknowledgement made on one (and the box's answer) shows on the other."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.centre.console import accounts
from agent.centre.console.app import Console, Options
from agent.centre.console.pgdatabase import PgDatabase
from agent.centre.link import Endpoint
from agent.centre.service import run_receiver
from agent.testing.broker import Mosquitto
from tests.conftest import AgentProcess, wait_for
from tests.console.conftest import PASSWORDS, browser, keys, log_in, school_config

__all__ = ["browser", "keys"]  # fixtures, used by name


def _links_up(url: str) -> int:
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("SELECT COUNT(*) FROM links WHERE up = 1").fetchone()
        except psycopg.errors.UndefinedTable:  # no receiver has made the ledger yet
            return 0
    return int(row[0]) if row else 0


@pytest.fixture
def centre(tmp_path: Path, broker: Mosquitto, keys: Path,
           ledger_url: str) -> Iterator[tuple[list[Console], AgentProcess, str]]:
    """One database for the ledger and the consoles' tables (they could be two)."""
    stop = threading.Event()
    receivers = [threading.Thread(target=run_receiver, daemon=True, args=(
        broker.url, "schools", tmp_path / f"store-{n}", f"receiver-{n}", stop),
        kwargs={"ledger_url": ledger_url}) for n in (1, 2)]
    for r in receivers:
        r.start()
    wait_for(lambda: _links_up(ledger_url) == 4, 20, "both receivers' two links")
    db = PgDatabase.open(ledger_url)
    accounts.add_user(db, "chief", "supervisor", PASSWORDS["chief"], "test")
    accounts.add_user(db, "ivanov", "operator", PASSWORDS["ivanov"], "test")
    db.close()
    consoles = [Console(Options(store=tmp_path / f"store-{n}", data=tmp_path / f"console-{n}",
                                endpoint=Endpoint.parse(broker.url),
                                key_file=keys / "centre.key", client_id=f"edge-console-{n}",
                                listen=("127.0.0.1", 0), ledger_url=ledger_url,
                                database_url=ledger_url)) for n in (1, 2)]
    for c in consoles:
        c.start()
        wait_for(c.boxes.link.subscribed.is_set, 10, "the console's MQTT session")
    agent = AgentProcess(school_config(tmp_path, broker, keys)).start()
    try:
        yield consoles, agent, ledger_url
    finally:
        agent.close()
        for c in consoles:
            c.stop()
        stop.set()
        for r in receivers:
            r.join(10)


def test_each_alarm_once_on_both_consoles_and_one_acknowledgement(
        centre: tuple[list[Console], AgentProcess, str], browser: Any) -> None:
    consoles, agent, url = centre
    first = log_in(browser, consoles[0].url, "ivanov")
    second = log_in(browser, consoles[1].url, "chief")
    events = []
    for button in ("entrance", "gym", "office"):
        found = re.search(r"event_id=(\S+)", agent.press(button).stdout)
        assert found
        events.append(found.group(1))
    for page in (first, second):
        for event in events:
            page.locator(f'tr.alarm[data-key="sim-school/{event}"]').wait_for()
        assert page.locator("tr.alarm").count() == 3
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM alarms").fetchone() == (3,)

    key = f"sim-school/{events[2]}"
    first.locator(f'tr.alarm[data-key="{key}"]').click()
    first.fill("#alarm-detail .ack-reason", "Наряд 7 выехал")
    first.click("#alarm-detail .ack-button")
    first.locator("#alarm-detail .box-confirmed").wait_for()
    wait_for(lambda: (agent.status() or {}).get("indicator") == "acknowledged", 5,
             "the box's indicator")
    second.locator(f'tr.alarm[data-key="{key}"].acked').wait_for()
    second.locator(f'tr.alarm[data-key="{key}"]').click()
    second.locator("#alarm-detail .box-confirmed").wait_for()
    assert "ivanov" in (second.locator("#alarm-detail .acked-by").text_content() or "")

    second.click(".tab[data-tab=audit]")  # one audit chain for the centre, and it verifies
    second.locator("#audit-verdict .chain-ok").wait_for()
    actions = second.locator("tr.audit-entry").evaluate_all(
        "rows => rows.map(r => r.dataset.action + ' ' + r.children[1].textContent)")
    assert "ack ivanov" in actions and "login chief" in actions
    assert actions.count("command_result box:sim-school") == 1
