"""A centre with two receivers and two consoles on one PostgreSQL: each alarm appears once on
both consoles, and an acknowledgement made on one (and the box's answer) shows on the other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.centre.console.app import Console
from agent.testing.site import AgentProcess, Centre
from tests.conftest import wait_for
from tests.console.conftest import browser, log_in, press, school, start_console

__all__ = ["browser"]  # a fixture, used by name


@pytest.fixture
def centre(
    tmp_path: Path, keys: Path, ledger_url: str
) -> Iterator[tuple[list[Console], AgentProcess, str]]:
    """One database for the ledger and the consoles' tables (they could be two)."""
    site = school(tmp_path, keys, centre=False).start()
    receivers: list[Centre] = []
    consoles: list[Console] = []
    try:
        for n in (1, 2):
            receivers.append(
                Centre(
                    site.broker.url,
                    tmp_path / f"store-{n}",
                    client_id=f"receiver-{n}",
                    ledger_url=ledger_url,
                ).start()
            )
        for n in (1, 2):
            consoles.append(
                start_console(
                    tmp_path,
                    site.broker.url,
                    keys,
                    tmp_path / f"store-{n}",
                    f"console-{n}",
                    ledger_url,
                )
            )
        agent = site.start_agent(process=True)
        assert isinstance(agent, AgentProcess)
        yield consoles, agent, ledger_url
    finally:
        site.stop_agent()
        for c in consoles:
            c.stop()
        for r in receivers:
            r.stop()
        site.stop()


def test_each_alarm_once_on_both_consoles_and_one_acknowledgement(
    centre: tuple[list[Console], AgentProcess, str], browser: Any
) -> None:
    consoles, agent, url = centre
    first = log_in(browser, consoles[0].url, "ivanov")
    second = log_in(browser, consoles[1].url, "chief")
    events = [press(agent, button) for button in ("entrance", "gym", "office")]
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
    wait_for(
        lambda: (agent.status() or {}).get("indicator") == "acknowledged", 5, "the box's indicator"
    )
    second.locator(f'tr.alarm[data-key="{key}"].acked').wait_for()
    second.locator(f'tr.alarm[data-key="{key}"]').click()
    second.locator("#alarm-detail .box-confirmed").wait_for()
    assert "ivanov" in (second.locator("#alarm-detail .acked-by").text_content() or "")

    second.click(".tab[data-tab=audit]")  # one audit chain for the centre, and it verifies
    second.locator("#audit-verdict .chain-ok").wait_for()
    actions = second.locator("tr.audit-entry").evaluate_all(
        "rows => rows.map(r => r.dataset.action + ' ' + r.children[1].textContent)"
    )
    assert "ack ivanov" in actions and "login chief" in actions
    assert actions.count("command_result box:sim-school") == 1
