"""An operations centre on one machine for the console's tests: a simulated site (agent/testing: a
real Mosquitto, the real receiver, the simulated school's agent as its own process), the console,
and headless Chromium (Debian's, driven by Playwright) as the officer's browser."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.centre.console import accounts
from agent.centre.console.app import Console, Options
from agent.centre.console.routes import Settings
from agent.centre.link import Endpoint
from agent.testing.browser import CHROMIUM, launch
from agent.testing.site import AgentProcess, Centre, Site
from tests.conftest import wait_for

AUTOPLAY = "--autoplay-policy=no-user-gesture-required"
HOSTILE_LOCATION = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
ESCALATE_S = (2, 4)  # short, so a test sees both levels
PASSWORDS = {"chief": "chief-password-1", "ivanov": "ivanov-password-1"}
SHORT_CLIPS = {"entrance-cam": {"pre_alarm_s": 2, "post_alarm_s": 2}}


@dataclass
class Centre4Console:
    """What a console test drives: the site (the school's agent, the receiver), the console."""

    site: Site
    console: Console
    keys: Path

    @property
    def url(self) -> str:
        return self.console.url

    @property
    def agent(self) -> AgentProcess:
        assert isinstance(self.site.agent, AgentProcess)
        return self.site.agent

    @property
    def receiver(self) -> Centre:
        assert self.site.centre is not None
        return self.site.centre


def school(tmp_path: Path, keys: Path, video: bool = False, centre: bool = True) -> Site:
    """The simulated school (its agent a process, once ``start_agent``), commanded by this
    centre's key, with a hostile location; with ``video``, its entrance camera with short clips
    (2 s before and after a press)."""
    return Site(
        tmp_path,
        agent=None,
        centre=centre,
        cameras=SHORT_CLIPS if video else False,
        buttons={"gym": {"location": HOSTILE_LOCATION}},
        commands={"public_key_file": str(keys / "centre.pub")},
        indicators={"led_pin": 5, "ack_timeout_s": 300},
    )


def start_console(
    tmp_path: Path,
    broker_url: str,
    keys: Path,
    store: Path,
    name: str = "console",
    ledger_url: str | None = None,
    settings: Settings | None = None,
) -> Console:
    """A console on the receiver's ``store`` (or the shared ``ledger_url``, which then holds
    the consoles' tables too), with the two officers of PASSWORDS."""
    console = Console(
        Options(
            store=store,
            data=tmp_path / name,
            endpoint=Endpoint.parse(broker_url),
            key_file=keys / "centre.key",
            client_id=f"edge-{name}",
            listen=("127.0.0.1", 0),
            settings=settings or Settings(escalate_s=ESCALATE_S),
            ledger_url=ledger_url,
            database_url=ledger_url,
        )
    )
    if not accounts.users(console.db):
        accounts.add_user(console.db, "chief", "supervisor", PASSWORDS["chief"], "test")
        accounts.add_user(console.db, "ivanov", "operator", PASSWORDS["ivanov"], "test")
    console.start()
    wait_for(console.boxes.link.subscribed.is_set, 10, "the console's MQTT session")
    return console


def press(box: AgentProcess, button: str) -> str:
    """Press and release ``button`` on the box; the alarm's event id."""
    return str(box.press(button)[0]["event_id"])


@pytest.fixture
def centre(request: pytest.FixtureRequest, tmp_path: Path, keys: Path) -> Iterator[Centre4Console]:
    """``@pytest.mark.parametrize("centre", [True], indirect=True)`` gives the school video."""
    site = school(tmp_path, keys, video=bool(getattr(request, "param", False))).start()
    try:
        console = start_console(tmp_path, site.broker.url, keys, tmp_path / "centre")
        try:
            site.start_agent(process=True)
            yield Centre4Console(site, console, keys)
        finally:
            site.stop_agent()
            console.stop()
    finally:
        site.stop()


@pytest.fixture(scope="module")  # per module: tests/postgres imports it too, and two
def browser() -> Iterator[Any]:  # sync_playwright instances must not be alive at once
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (install.sh --dev)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install '.[centre,test]' brings playwright"
    )
    with sync_api.sync_playwright() as p:
        b = launch(p, AUTOPLAY)
        yield b
        b.close()


def log_in(browser: Any, url: str, user: str, requests: list[str] | None = None) -> Any:
    """A new browser context (its own cookies) logged in as ``user``; returns the page. Every
    URL the page asks for goes into ``requests``, when given."""
    context = browser.new_context(
        locale="ru-RU", timezone_id="Asia/Almaty", viewport={"width": 1440, "height": 900}
    )
    context.set_default_timeout(10_000)
    if requests is not None:
        context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.goto(url + "/")
    assert page.url.endswith("/login"), "an unauthenticated officer reached the console"
    page.fill("#user", user)
    page.fill("#password", PASSWORDS[user])
    page.click("#login-form button[type=submit]")
    page.wait_for_url(url + "/")
    page.wait_for_selector("#link-state.up")
    return page


def screenshot(page: Any, name: str) -> None:
    """Kept for docs/console.md when EDGE_CONSOLE_SCREENSHOTS names a folder."""
    import os

    folder = os.environ.get("EDGE_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
