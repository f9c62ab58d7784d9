"""An operations centre on one machine for the console's tests: a real Mosquitto, the real
receiver, a running agent on the simulated school (its own process), the console, and headless
Chromium (Debian's, driven by Playwright) as the officer's browser."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.centre.console import accounts
from agent.centre.console.app import Console, Options
from agent.centre.console.database import SqliteDatabase
from agent.centre.console.routes import Settings
from agent.centre.link import Endpoint
from agent.testing.broker import Mosquitto
from tests.conftest import AgentProcess, Centre, cli, wait_for, write_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required"]
HOSTILE_LOCATION = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
ESCALATE_S = (2, 4)  # short, so a test sees both levels
PASSWORDS = {"chief": "chief-password-1", "ivanov": "ivanov-password-1"}


@dataclass
class Centre4Console:
    """What a console test drives: the school's agent, the receiver, the console."""

    agent: AgentProcess
    receiver: Centre
    console: Console
    keys: Path

    @property
    def url(self) -> str:
        return self.console.url


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    r = cli("central", "--key", str(tmp_path / "keys" / "centre.key"), "keygen")
    assert r.returncode == 0, r.stderr
    return tmp_path / "keys"


def school_config(tmp_path: Path, broker: Mosquitto, keys: Path, video: bool = False) -> Path:
    """The simulated school, commanded by this centre's key, with a hostile location; with
    ``video``, its entrance camera (short clips: 2 s before and after a press)."""
    import yaml

    from agent.config import default_config_text

    school = yaml.safe_load(default_config_text())
    buttons, cameras = school["buttons"], school["cameras"][:1]
    for b in buttons:
        if not video or b["id"] != "entrance":
            b.pop("cameras", None)
    for camera in cameras:
        camera.update({"pre_alarm_s": 2, "post_alarm_s": 2})
    buttons[1]["location"] = HOSTILE_LOCATION  # gym
    return write_config(tmp_path / "agent.yaml", broker.port, tmp_path / "state",
                        buttons=buttons, cameras=cameras if video else [],
                        commands={"public_key_file": str(keys / "centre.pub")},
                        indicators={"led_pin": 5, "ack_timeout_s": 300})


def start_console(tmp_path: Path, broker: Mosquitto, keys: Path, store: Path,
                  name: str = "console") -> Console:
    db = SqliteDatabase.open(tmp_path / name)
    try:
        if not accounts.users(db):
            accounts.add_user(db, "chief", "supervisor", PASSWORDS["chief"], "test")
            accounts.add_user(db, "ivanov", "operator", PASSWORDS["ivanov"], "test")
    finally:
        db.close()
    console = Console(Options(store=store, data=tmp_path / name,
                              endpoint=Endpoint.parse(broker.url), key_file=keys / "centre.key",
                              client_id=f"edge-{name}", listen=("127.0.0.1", 0),
                              settings=Settings(escalate_s=ESCALATE_S)))
    console.start()
    wait_for(console.boxes.link.subscribed.is_set, 10, "the console's MQTT session")
    return console


@pytest.fixture
def centre(request: pytest.FixtureRequest, tmp_path: Path, broker: Mosquitto,
           keys: Path) -> Iterator[Centre4Console]:
    """``@pytest.mark.parametrize("centre", [True], indirect=True)`` gives the school video."""
    receiver = Centre(broker, tmp_path / "centre").start()
    wait_for(lambda: (tmp_path / "centre" / "centre.db").exists(), 10, "the receiver's ledger")
    console = start_console(tmp_path, broker, keys, tmp_path / "centre")
    video = bool(getattr(request, "param", False))
    agent = AgentProcess(school_config(tmp_path, broker, keys, video)).start()
    try:
        yield Centre4Console(agent, receiver, console, keys)
    finally:
        agent.close()
        console.stop()
        receiver.stop()


@pytest.fixture(scope="module")  # per module: tests/postgres imports it too, and two
def browser() -> Iterator[Any]:   # sync_playwright instances must not be alive at once
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (install.sh --dev)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install '.[centre,test]' brings playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def log_in(browser: Any, url: str, user: str) -> Any:
    """A new browser context (its own cookies) logged in as ``user``; returns the page."""
    context = browser.new_context(locale="ru-RU", timezone_id="Asia/Almaty",
                                  viewport={"width": 1440, "height": 900})
    context.set_default_timeout(10_000)
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

