"""Live view and recorded history on request, from the centre's command line to a playable file."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Topics
from agent.delivery.uplink.link import Uplink
from agent.delivery.uplink.pacing import Pacer
from agent.testing.broker import Mosquitto
from agent.testing.site import school_config
from tests.conftest import AgentProcess, Centre, cli, subscriber, wait_for
from tests.test_uplink import _mqtt
from tests.video_fixtures import CAMERAS, duration


@pytest.fixture
def school(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[AgentProcess, Path]]:
    """The simulated school's agent, its four cameras (gym-cam relaying all the time),
    commanded by this centre's key, and the centre's receiver; the agent and the store."""
    store = tmp_path / "centre"
    assert cli("central", "--key", str(tmp_path / "keys" / "centre.key"), "keygen").returncode == 0
    cameras: dict[str, dict[str, Any]] = {camera: {} for camera in CAMERAS}
    cameras["gym-cam"] = {"live": {"mode": "always"}}
    config = school_config(
        tmp_path / "agent.yaml",
        port=broker.port,
        storage=tmp_path / "state",
        cameras=cameras,
        commands={"public_key_file": str(tmp_path / "keys" / "centre.pub")},
    )
    agent, centre = AgentProcess(config), Centre(broker.url, store).start()
    try:
        yield agent.start(), store
    finally:
        agent.close()
        centre.stop()


def _central(broker: Mosquitto, store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    key = str(store.parent / "keys" / "centre.key")
    return cli(
        "central", "--broker", broker.url, "--store", str(store), "--key", key, *args, timeout=30
    )


def _answer(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_live_on_request_writes_a_growing_playable_file(
    school: tuple[AgentProcess, Path], broker: Mosquitto
) -> None:
    _, store = school
    result = _answer(
        _central(broker, store, "live", "sim-school", "entrance-cam", "--seconds", "3")
    )
    live = store / "sim-school" / "live" / str(result["data"]["session"]) / "entrance-cam.ts"
    wait_for(lambda: live.exists() and live.stat().st_size > 0, 10, "the first live segment")
    first = live.stat().st_size
    wait_for(lambda: live.stat().st_size > first, 10, "the file growing")
    time.sleep(4)  # the session ends by itself after 3 s
    size = live.stat().st_size
    time.sleep(2)
    assert live.stat().st_size == size, "live kept flowing after the session ended"
    assert duration(live) >= 2.0


def test_always_on_live_flows_without_a_request(school: tuple[AgentProcess, Path]) -> None:
    _, store = school
    live = store / "sim-school" / "live" / "always" / "gym-cam.ts"
    wait_for(lambda: live.exists() and live.stat().st_size > 0, 15, "always-on live")
    assert not (store / "sim-school" / "live" / "always" / "entrance-cam.ts").exists()


def test_fetch_pulls_recorded_history_as_a_verified_clip(
    school: tuple[AgentProcess, Path], broker: Mosquitto
) -> None:
    _, store = school
    time.sleep(5)
    now = time.time()
    stamp = lambda t: datetime.fromtimestamp(t, UTC).isoformat()  # noqa: E731

    def fetch(start: str, end: str) -> subprocess.CompletedProcess[str]:
        return _central(
            broker, store, "fetch", "sim-school", "office-cam", "--from", start, "--to", end
        )

    result = _answer(fetch(stamp(now - 4), stamp(now - 1)))
    clip = store / "sim-school" / str(result["data"]["clip_id"]) / "office-cam.ts"
    wait_for(clip.with_name("office-cam.verify.json").exists, 15, "the fetched clip, verified")
    assert duration(clip) >= 2.0
    assert json.loads(clip.with_name("office-cam.verify.json").read_text())["verified"]
    r = fetch("2020-01-01T00:00:00Z", "2020-01-01T00:10:00Z")
    assert r.returncode == 1 and "no_video" in r.stdout


def test_live_skips_to_the_newest_segment_when_the_link_is_behind(
    tmp_path: Path, broker: Mosquitto
) -> None:
    topics = Topics("schools", "site-a")
    box = Outbox.open(tmp_path / "o.db")
    col = subscriber(broker.port, "schools/site-a/live/#", client_id="live")
    up = Uplink(
        _mqtt(broker.port), topics, box, lambda s, _r: s.encode(), pacer=Pacer(160, auto=False)
    )
    up.start()
    try:
        wait_for(lambda: up.state == "online", 10, "online")
        for seq in range(10):  # 10 segments of 30 KB in 1 s, on a 20 KB/s cap
            up.post_live(topics.live("cam"), [b"%02d" % seq + b"x" * 10_000 for _ in range(3)])
            time.sleep(0.1)
        wait_for(lambda: any(m.payload[:2] == b"09" for m in col.received()), 15, "the newest")
        seqs = sorted({int(m.payload[:2]) for m in col.received()})
        assert 9 in seqs and len(seqs) < 10, seqs  # skipped some, never fell behind for good
        assert up.mailbox.live_dropped > 0
    finally:
        up.stop()
        col.close()
        box.close()
