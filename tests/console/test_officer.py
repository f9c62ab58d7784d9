"""The duty officer's shift, in a real browser: log in, see a press arrive without reloading,
acknowledge it and see the school's box confirm, read a hostile location as text, be refused a
supervisor's action, and find every step in an audit log that verifies."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from tests.conftest import wait_for
from tests.console.conftest import HOSTILE_LOCATION, Centre4Console, log_in, press, screenshot


def _status(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url, method=method, headers=headers or {}, data=b"{}" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _fetch_status(page: Any, method: str, path: str, body: dict[str, Any]) -> int:
    """A request from the page itself, with its cookie and CSRF token (as a crafted click)."""
    return int(
        page.evaluate(
            "async ([m, p, b]) => (await fetch(p, {method: m, headers: {'Content-Type': "
            "'application/json', 'X-CSRF-Token': ME.csrf}, body: JSON.stringify(b)})).status",
            [method, path, body],
        )
    )


def test_nobody_unauthenticated_reaches_anything(centre: Centre4Console) -> None:
    url = centre.url
    event = press(centre.agent, "entrance")
    wait_for(lambda: len(centre.receiver.alarms()) == 1, 10, "the alarm at the receiver")
    assert _status(url + "/login") == 200
    for path in [
        "/api/me",
        "/api/events",
        "/api/audit",
        "/api/users",
        "/api/schools",
        f"/api/alarms/sim-school/{event}",
    ]:
        assert _status(url + path) == 401, path
    no_redirect = urllib.request.build_opener(_NoRedirect)
    try:
        no_redirect.open(url + "/", timeout=5)
        raise AssertionError("the console page was served without a session")
    except urllib.error.HTTPError as exc:
        assert exc.code == 303 and exc.headers["Location"] == "/login"
    origin = {"Origin": url, "Content-Type": "application/json"}
    assert _status(url + f"/api/alarms/sim-school/{event}/ack", "POST", origin) == 401
    assert _status(url + "/api/sites/sim-school/test_mode", "POST", origin) == 401
    assert _status(url + "/api/login", "POST", {"Content-Type": "application/json"}) == 403
    assert _status(url + "/api/login", "POST", origin) == 400  # no name: refused, not a crash
    assert centre.agent.status()["indicator"] == "waiting"  # type: ignore[index]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def test_an_officers_shift(centre: Centre4Console, browser: Any) -> None:
    page = log_in(browser, centre.url, "ivanov")
    [cookie] = page.context.cookies()
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.evaluate("window.notReloaded = true")

    event = press(centre.agent, "entrance")
    row = page.locator(f'tr.alarm[data-key="sim-school/{event}"]')
    row.wait_for()
    assert "new" in (row.get_attribute("class") or "")
    assert page.evaluate("window.notReloaded") is True, "the page was reloaded"

    row.click()
    page.fill("#alarm-detail .ack-reason", "Наряд 12 выехал")
    page.click("#alarm-detail .ack-button")
    page.locator("#alarm-detail .box-confirmed").wait_for()
    wait_for(
        lambda: (centre.agent.status() or {}).get("indicator") == "acknowledged",
        5,
        "the box's indicator to show the acknowledgement",
    )
    assert "acked" in (row.get_attribute("class") or "")

    page.fill("#alarm-detail .close-note", "Ложное срабатывание, проверено нарядом")
    page.click("#alarm-detail .close-button")
    page.locator("#alarm-detail .closed-by").wait_for()

    hostile = press(centre.agent, "gym")
    cell = page.locator(f'tr.alarm[data-key="sim-school/{hostile}"] td.location')
    cell.wait_for()
    assert cell.text_content() == HOSTILE_LOCATION
    assert page.title() != "pwned" and not dialogs
    assert page.locator("#alarm-list img, #alarm-detail img, #alarm-list script").count() == 0
    hostile_row = page.locator(f'tr.alarm[data-key="sim-school/{hostile}"]')
    for level in ("escalated-1", "escalated-2"):  # unacknowledged: escalates by age
        page.wait_for_function(
            "([sel, cls]) => document.querySelector(sel).classList.contains(cls)",
            arg=[f'tr.alarm[data-key="sim-school/{hostile}"]', level],
        )
    assert hostile_row.locator(".badge").text_content() == "ЭСКАЛАЦИЯ"
    screenshot(page, "queue")

    assert page.locator(".tab[data-tab=audit]").is_hidden()
    assert page.evaluate("async () => (await fetch('/api/audit')).status") == 403
    assert page.evaluate("async () => (await fetch('/api/users')).status") == 403
    assert (
        _fetch_status(page, "POST", "/api/sites/sim-school/test_mode", {"on": True, "minutes": 5})
        == 403
    )
    assert (
        _fetch_status(
            page,
            "POST",
            "/api/users",
            {"name": "mallory", "role": "supervisor", "password": "mallory-password"},
        )
        == 403
    )
    page.context.close()

    chief = log_in(browser, centre.url, "chief")
    chief.click(".tab[data-tab=audit]")
    chief.locator("#audit-verdict .chain-ok").wait_for()
    actions = chief.locator("tr.audit-entry").evaluate_all(
        "rows => rows.map(r => r.dataset.action + ' ' + r.children[1].textContent)"
    )
    for step in [
        "login ivanov",
        "ack ivanov",
        "command_result box:sim-school",
        "close ivanov",
        "login chief",
    ]:
        assert step in actions, (step, actions)
    screenshot(chief, "audit")
    chief.context.close()


def test_the_schools_board_and_a_walk_test(centre: Centre4Console, browser: Any) -> None:
    chief = log_in(browser, centre.url, "chief")
    chief.click(".tab[data-tab=schools]")
    row = chief.locator('tr.site-row[data-site="sim-school"]')
    row.locator("td.site-state").wait_for()
    chief.wait_for_function(
        "() => document.querySelector('tr.site-row[data-site=sim-school]')"
        ".classList.contains('online')"
    )
    chief.locator('tr.site-row[data-site="sim-school"] td.health-at').wait_for()
    assert "entrance: idle" in (row.text_content() or "")  # the box's last health

    row.locator("button.test-on").click()
    wait_for(
        lambda: (centre.agent.status() or {}).get("test_mode_until"),
        10,
        "the box to start the walk test",
    )
    chief.wait_for_function(
        "() => document.querySelector('tr.site-row[data-site=sim-school] "
        "td.test-until').textContent !== '—'"
    )
    chief.click(".tab[data-tab=alarms]")
    event = press(centre.agent, "entrance")
    test_row = chief.locator(f'tr.alarm[data-key="sim-school/{event}"]')
    test_row.wait_for()
    assert "test" in (test_row.get_attribute("class") or "")
    assert test_row.locator(".badge").text_content() == "ТЕСТ"  # noqa: RUF001 (Russian)

    chief.select_option("#lang", "kk")
    assert chief.locator(".tab[data-tab=schools]").text_content() == "Мектептер"
    chief.select_option("#lang", "en")
    assert chief.locator(".tab[data-tab=schools]").text_content() == "Schools"
    chief.click(".tab[data-tab=schools]")  # (its screenshot: test_schools.py, with names)

    centre.agent.kill()  # the box dies: its will turns it offline within 1.5 keepalives
    chief.wait_for_function(
        "() => document.querySelector('tr.site-row[data-site=sim-school]')"
        ".classList.contains('offline')",
        timeout=15_000,
    )
    chief.context.close()
