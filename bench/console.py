"""The console as the officer sees it: press -> alarm on screen, live view glass to glass, and
alarm -> its clip playing; each beside the figure it is built on, measured in the same run.

    .venv/bin/python bench/console.py                  # 200 presses, 30 s of live, 5 clips
    .venv/bin/python bench/console.py --json
    .venv/bin/python bench/console.py --presses 50 --live-seconds 10 --clips 2   # a quick look

One machine, loopback: a private Mosquitto, the agent on the simulated school (its own process,
mock GPIO, the entrance camera synthetic H.264 at 320x180, 10 fps, 1 s segments, 2 s before and
after a press), the real receiver and the console in this process, and Debian's Chromium
(headless, Playwright) logged in as an operator.

- **press -> on screen**: from just before the press (the agent's control socket, which returns
  once the alarm is on its disk) to the alarm's row appearing in the page's DOM (a
  MutationObserver, the browser's clock: the same machine's), beside **press -> stored** (the
  receiver's ``on_alarm``, after its fsync). Presses are paced (``--interval-s``) as separate
  events, not a storm (the storm is bench/alarm_storm.py's).
- **live, glass to glass**: the page's own figure: now minus the capture time of the frame on
  screen (the segment's start as the box filmed it, carried with each segment, plus the
  playback position within it), sampled every 250 ms.
- **press -> clip playing**: to the clip's video element playing; it includes the 2 s of video
  after the press the box waits for.

Bounded: every wait has a deadline (exit 1 naming it); everything started is stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import logs
from agent.box import control
from agent.centre.console import accounts
from agent.centre.console.app import Console, Options
from agent.centre.console.database import SqliteDatabase
from agent.centre.link import Endpoint
from agent.centre.service import run_receiver
from agent.commands.keys import generate_keypair
from agent.config import default_config_text
from agent.testing.broker import Mosquitto
from agent.testing.stats import default_storage_parent, describe, machine_context

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "bench-password-1"
OBSERVER = """() => { window.seen = {};
  new MutationObserver(() => { const now = performance.timeOrigin + performance.now();
    for (const row of document.querySelectorAll('tr.alarm[data-key]'))
      if (!(row.dataset.key in window.seen)) window.seen[row.dataset.key] = now;
  }).observe(document.getElementById('alarm-list'), {childList: true, subtree: true}); }"""


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    raise SystemExit(f"bench/console.py: timed out after {timeout} s waiting for {what}")


def school(work: Path, port: int, keys: Path) -> Path:
    data = yaml.safe_load(default_config_text())
    data["mqtt"].update({"port": port, "keepalive_s": 5})
    data["storage"]["path"] = str(work / "state")
    data["cameras"] = data["cameras"][:1]
    data["cameras"][0].update({"pre_alarm_s": 2, "post_alarm_s": 2})
    for button in data["buttons"]:
        if button["id"] != "entrance":
            button.pop("cameras", None)
    data["commands"] = {"public_key_file": str(keys / "centre.pub")}
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def press(storage: Path, button: str) -> str:
    sock = control.socket_path(storage)
    reply = control.call(sock, {"cmd": "simulate", "action": "press", "button": button})
    control.call(sock, {"cmd": "simulate", "action": "release", "button": button})
    return str(reply["events"][0]["event_id"])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import subprocess

    from playwright.sync_api import sync_playwright

    broker = Mosquitto(work / "broker")
    broker.start()
    generate_keypair(work / "keys")
    stored: dict[str, float] = {}
    stop = threading.Event()
    receiver = threading.Thread(target=run_receiver, daemon=True, kwargs={
        "broker": broker.url, "topic_prefix": "schools", "store": work / "centre",
        "client_id": "bench-centre", "stop": stop,
        "on_alarm": lambda record: stored.setdefault(record["event_id"], time.time())})
    receiver.start()
    wait(lambda: (work / "centre" / "centre.db").exists(), 10, "the receiver's ledger")
    db = SqliteDatabase.open(work / "console")
    accounts.add_user(db, "operator", "operator", PASSWORD, "bench")
    db.close()
    console = Console(Options(store=work / "centre", data=work / "console",
                              endpoint=Endpoint.parse(broker.url),
                              key_file=work / "keys" / "centre.key", listen=("127.0.0.1", 0)))
    console.start()
    log = open(work / "agent.log", "w")  # noqa: SIM115 (closed below)
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c",
                              str(school(work, broker.port, work / "keys"))],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(lambda: control.socket_path(work / "state").exists(), 15, "the agent")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(console.url + "/login")
            page.fill("#user", "operator")
            page.fill("#password", PASSWORD)
            page.click("#login-form button[type=submit]")
            page.wait_for_selector("#link-state.up")
            page.evaluate(OBSERVER)
            return {"machine": machine_context(work),
                    **screen(args, work, page, stored),
                    **live(args, page),
                    **clips(args, work, page)}
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()
        console.stop()
        stop.set()
        receiver.join(10)
        broker.kill()


def screen(args: argparse.Namespace, work: Path, page: Any,
           stored: dict[str, float]) -> dict[str, Any]:
    pressed: dict[str, float] = {}
    for i in range(args.presses + 10):
        t0 = time.time()
        event = press(work / "state", "gym")
        if i >= 10:  # the first ten warm up
            pressed[event] = t0
        time.sleep(args.interval_s)
    keys = {f"sim-school/{e}": e for e in pressed}
    seen = wait(lambda: (s := page.evaluate("window.seen")) and all(k in s for k in keys) and s,
                30, "every alarm on screen")
    wait(lambda: all(e in stored for e in pressed), 10, "every alarm stored")
    return {"press_to_screen": describe([seen[k] / 1000 - pressed[e] for k, e in keys.items()]),
            "press_to_stored": describe([stored[e] - pressed[e] for e in pressed])}


def live(args: argparse.Namespace, page: Any) -> dict[str, Any]:
    if not args.live_seconds:
        return {}
    page.locator('tr.alarm[data-key^="sim-school/"]').first.click()
    button = page.locator('#alarm-video .live-button[data-camera="entrance-cam"]')
    button.wait_for(timeout=20_000)
    button.click()
    page.wait_for_function("() => document.querySelector('video.live-video')?.dataset"
                           ".latencyMs", timeout=20_000)
    samples = []
    for _ in range(int(args.live_seconds * 4)):
        samples.append(float(page.locator("video.live-video").get_attribute("data-latency-ms")))
        time.sleep(0.25)
    return {"live_glass_to_glass": describe([s / 1000 for s in samples])}


def clips(args: argparse.Namespace, work: Path, page: Any) -> dict[str, Any]:
    took = []
    for _ in range(args.clips):
        t0 = time.time()
        event = press(work / "state", "entrance")
        row = page.locator(f'tr.alarm[data-key="sim-school/{event}"]')
        row.wait_for(timeout=10_000)
        row.click()
        page.wait_for_function("() => { const v = document.querySelector("
                               "'#alarm-video video.clip-video'); return v && v.currentTime > 0; }",
                               timeout=30_000)
        took.append(time.time() - t0)
    return {"press_to_clip_playing": describe(took)} if took else {}


def report(figures: dict[str, Any]) -> str:
    names = {"press_to_stored": "press -> stored by the receiver (baseline)",
             "press_to_screen": "press -> alarm on the officer's screen",
             "live_glass_to_glass": "live view, glass to glass",
             "press_to_clip_playing": "press -> its clip playing (incl. 2 s after the press)"}
    lines = ["| what | n | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for key, name in names.items():
        if key in figures:
            f = figures[key]
            lines.append(f"| {name} | {f['n']} | {f['p50_ms']:.0f} | {f['p99_ms']:.0f} | "
                         f"{f['max_ms']:.0f} |")
    m = figures["machine"]
    lines.append(f"\n{m['cpus']} CPUs ({m['cpu_model']}), load {m['loadavg']}, "
                 f"{m['storage_fs']} at {m['storage_dir']}, code {m['agent_code']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--interval-s", type=float, default=0.2)
    parser.add_argument("--live-seconds", type=float, default=30)
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--storage-dir", type=Path, default=None)
    args = parser.parse_args()
    logs.setup("error")  # the receiver's one line per alarm would bury the table
    with tempfile.TemporaryDirectory(prefix="bench-console-",
                                     dir=args.storage_dir or default_storage_parent()) as tmp:
        figures = run(args, Path(tmp))
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
