"""The console as the officer sees it: press -> alarm on screen, live view glass to glass, and
alarm -> its clip playing; each beside the figure it is built on, measured in the same run.

    .venv/bin/python -m bench.console                  # 200 presses, 30 s of live, 5 clips
    .venv/bin/python -m bench.console --json
    .venv/bin/python -m bench.console --presses 50 --live-seconds 10 --clips 2   # a quick look

One machine, loopback: a simulated site (agent/testing): a private Mosquitto, the agent on the
simulated school (its own process, mock GPIO, the entrance camera synthetic H.264 at 320x180,
10 fps, 1 s segments, 2 s before and after a press), the real receiver and the console in this
process, and Debian's Chromium (headless, Playwright) logged in as an operator.

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
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from agent import logs
from agent.centre.console import accounts
from agent.centre.console.app import Console, Options
from agent.centre.link import Endpoint
from agent.commands.keys import generate_keypair
from agent.testing import bench, wait_for
from agent.testing.browser import launch
from agent.testing.site import AgentProcess, Site
from agent.testing.stats import describe, machine_context, machine_line, table

PASSWORD = "bench-password-1"
SHORT_CLIPS = {"entrance-cam": {"pre_alarm_s": 2, "post_alarm_s": 2}}  # the other cameras off
OBSERVER = """() => { window.seen = {};
  new MutationObserver(() => { const now = performance.timeOrigin + performance.now();
    for (const row of document.querySelectorAll('tr.alarm[data-key]'))
      if (!(row.dataset.key in window.seen)) window.seen[row.dataset.key] = now;
  }).observe(document.getElementById('alarm-list'), {childList: true, subtree: true}); }"""


def press(box: AgentProcess, button: str) -> str:
    """Press and release through the agent's control socket; the alarm's event id."""
    return str(box.press(button)[0]["event_id"])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    generate_keypair(work / "keys")
    stored: dict[str, float] = {}
    site = Site(
        work,
        agent=None,
        cameras=SHORT_CLIPS,
        on_alarm=lambda record: stored.setdefault(record["event_id"], time.time()),
        commands={"public_key_file": str(work / "keys" / "centre.pub")},
    )
    with site:
        assert site.centre is not None
        console = Console(
            Options(
                store=site.centre.store,
                data=work / "console",
                endpoint=Endpoint.parse(site.broker.url),
                key_file=work / "keys" / "centre.key",
                listen=("127.0.0.1", 0),
            )
        )
        accounts.add_user(console.db, "operator", "operator", PASSWORD, "bench")
        console.start()
        try:
            box = site.start_agent(process=True)
            assert isinstance(box, AgentProcess)
            with sync_playwright() as p:
                browser = launch(p)
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(console.url + "/login")
                page.fill("#user", "operator")
                page.fill("#password", PASSWORD)
                page.click("#login-form button[type=submit]")
                page.wait_for_selector("#link-state.up")
                page.evaluate(OBSERVER)
                return {
                    "machine": machine_context(work),
                    **screen(args, box, page, stored),
                    **live(args, page),
                    **clips(args, box, page),
                }
        finally:
            site.stop_agent()
            console.stop()


def screen(
    args: argparse.Namespace, box: AgentProcess, page: Any, stored: dict[str, float]
) -> dict[str, Any]:
    pressed: dict[str, float] = {}
    for i in range(args.presses + 10):
        t0 = time.time()
        event = press(box, "gym")
        if i >= 10:  # the first ten warm up
            pressed[event] = t0
        time.sleep(args.interval_s)
    keys = {f"sim-school/{e}": e for e in pressed}
    seen = wait_for(
        lambda: (s := page.evaluate("window.seen")) and all(k in s for k in keys) and s,
        30,
        "every alarm on screen",
    )
    wait_for(lambda: all(e in stored for e in pressed), 10, "every alarm stored")
    return {
        "press_to_screen": describe([seen[k] / 1000 - pressed[e] for k, e in keys.items()]),
        "press_to_stored": describe([stored[e] - pressed[e] for e in pressed]),
    }


def live(args: argparse.Namespace, page: Any) -> dict[str, Any]:
    if not args.live_seconds:
        return {}
    page.locator('tr.alarm[data-key^="sim-school/"]').first.click()
    button = page.locator('#alarm-video .live-button[data-camera="entrance-cam"]')
    button.wait_for(timeout=20_000)
    button.click()
    page.wait_for_function(
        "() => document.querySelector('video.live-video')?.dataset.latencyMs", timeout=20_000
    )
    samples = []
    for _ in range(int(args.live_seconds * 4)):
        samples.append(float(page.locator("video.live-video").get_attribute("data-latency-ms")))
        time.sleep(0.25)
    return {"live_glass_to_glass": describe([s / 1000 for s in samples])}


def clips(args: argparse.Namespace, box: AgentProcess, page: Any) -> dict[str, Any]:
    took = []
    for _ in range(args.clips):
        t0 = time.time()
        event = press(box, "entrance")
        row = page.locator(f'tr.alarm[data-key="sim-school/{event}"]')
        row.wait_for(timeout=10_000)
        row.click()
        page.wait_for_function(
            "() => { const v = document.querySelector("
            "'#alarm-video video.clip-video'); return v && v.currentTime > 0; }",
            timeout=30_000,
        )
        took.append(time.time() - t0)
    return {"press_to_clip_playing": describe(took)} if took else {}


def report(figures: dict[str, Any]) -> str:
    names = {
        "press_to_stored": "press -> stored by the receiver (baseline)",
        "press_to_screen": "press -> alarm on the officer's screen",
        "live_glass_to_glass": "live view, glass to glass",
        "press_to_clip_playing": "press -> its clip playing (incl. 2 s after the press)",
    }
    rows = {name: figures[key] for key, name in names.items() if key in figures}
    return "\n".join(
        [*table(rows, head="what", mean=False, digits=0), "", machine_line(figures["machine"])]
    )


def main() -> int:
    ap = bench.arguments(__doc__)
    ap.add_argument("--presses", type=int, default=200)
    ap.add_argument("--interval-s", type=float, default=0.2)
    ap.add_argument("--live-seconds", type=float, default=30)
    ap.add_argument("--clips", type=int, default=5)
    args = ap.parse_args()
    logs.setup("error")  # the receiver's one line per alarm would bury the table
    return bench.run("console", args, partial(run, args), report)


if __name__ == "__main__":
    sys.exit(main())
