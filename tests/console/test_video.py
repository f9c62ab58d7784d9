"""Video at the console, in the browser: the alarm's clip plays as soon as it arrived and shows
"verified", its signed original downloads byte for byte, a forged clip shows "altered", and
live view shows advancing frames with the picture's age."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.clock import rfc3339
from agent.delivery.protocol import Alarm
from agent.testing.mqtt import MqttClient
from agent.video.chain import BoxKey
from tests.boxmsgs import signed_chunks
from tests.console.conftest import Centre4Console, log_in, press, screenshot

PLAYING = """([sel, min]) => { const v = document.querySelector(sel);
  return v && !v.error && v.currentTime > min; }"""


def _forge(port: int, store: Path, tmp_path: Path) -> str:
    """Someone with a box's topics sends an alarm of sim-school and a clip of real video signed
    with a key that is not the school's pinned one."""
    event = str(uuid.uuid4())
    alarm = Alarm(
        event,
        1000,
        "sim-school",
        "entrance",
        "Main entrance, ground floor",
        "panic",
        rfc3339(time.time()),
        True,
    )
    real = next(store.glob("sim-school/*/entrance-cam.ts")).read_bytes()
    (tmp_path / "impostor").mkdir()
    chunks = signed_chunks(
        BoxKey.load_or_create(tmp_path / "impostor"), "sim-school", event, [real], "entrance-cam"
    )
    with MqttClient(port) as client:
        client.publish("schools/sim-school/alarm", alarm.to_json())
        for chunk in chunks:
            client.publish("schools/sim-school/clip/entrance-cam", chunk)
    return event


@pytest.mark.parametrize("centre", [True], indirect=True)
def test_clips_play_verified_or_show_altered_and_live_advances(
    centre: Centre4Console, browser: Any, tmp_path: Path
) -> None:
    page = log_in(browser, centre.url, "ivanov")
    time.sleep(3)  # the pre-alarm buffer fills
    event = press(centre.agent, "entrance")
    page.locator(f'tr.alarm[data-key="sim-school/{event}"]').click()
    clip = page.locator('#alarm-video .clip[data-camera="entrance-cam"][data-state="verified"]')
    clip.wait_for(timeout=30_000)  # 2 s after the press, then the upload
    assert clip.locator(".verdict").text_content() == "подлинно"
    page.wait_for_function(PLAYING, arg=["#alarm-video video.clip-video", 1.0])
    screenshot(page, "alarm-clip")

    original = centre.receiver.store / "sim-school" / event / "entrance-cam.ts"
    download = page.request.get(f"{centre.url}/media/clips/sim-school/{event}/entrance-cam.ts")
    assert download.ok and download.body() == original.read_bytes()

    page.locator('#alarm-video .live-button[data-camera="entrance-cam"]').click()
    page.wait_for_function(PLAYING, arg=["#alarm-video video.live-video", 0.5], timeout=20_000)
    first = page.evaluate("document.querySelector('video.live-video').currentTime")
    page.wait_for_function(PLAYING, arg=["#alarm-video video.live-video", first + 1.0])
    latency = int(page.locator("video.live-video").get_attribute("data-latency-ms") or -1)
    assert 0 < latency < 5000, latency  # bench/console.py measures it properly
    assert (
        page.evaluate(
            "document.querySelector('video.live-video').getVideoPlaybackQuality().totalVideoFrames"
        )
        > 10
    )
    screenshot(page, "live")

    forged = _forge(centre.site.broker.port, centre.receiver.store, tmp_path)
    page.locator(f'tr.alarm[data-key="sim-school/{forged}"]').click()
    altered = page.locator('#alarm-video .clip[data-camera="entrance-cam"][data-state="altered"]')
    altered.wait_for(timeout=15_000)
    assert altered.locator(".verdict").text_content() == "ИЗМЕНЕНО"
    page.context.close()
