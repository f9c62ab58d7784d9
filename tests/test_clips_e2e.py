"""Issue 3 end to end: a press gives the centre a playable clip of what happened before and after.

The agent runs as a process on the simulated school with synthetic cameras (real H.264 from
libx264 through PyAV); the centre is the real receiver; durations are read with ffprobe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import av
import pytest
import yaml

from agent.testing.broker import Mosquitto
from agent.testing.site import school_config
from tests.conftest import AgentProcess, Centre, wait_for
from tests.video_fixtures import CAMERAS, duration

PRE_S, POST_S, SEG_S = 3.0, 2.0, 1.0


def _config(tmp_path: Path, port: int) -> Path:
    clip = {"pre_alarm_s": PRE_S, "post_alarm_s": POST_S, "segment_s": SEG_S}
    cameras = {camera: clip for camera in CAMERAS}
    return school_config(
        tmp_path / "agent.yaml", port=port, storage=tmp_path / "state", cameras=cameras
    )


def _decode_all(path: Path) -> int:
    frames = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            assert frame.width == 320
            frames += 1
    return frames


def _clips(store: Path) -> list[Path]:
    """The clips the receiver has finished: linked into place, then verified (the
    ``.verify.json`` beside each comes last)."""
    return sorted(
        p for p in store.glob("sim-school/*/*.ts") if p.with_suffix(".verify.json").exists()
    )


def _video_on_disk(state: Path) -> list[Path]:
    return [p for p in state.rglob("*") if p.suffix in (".ts", ".tmp") and p.stat().st_size]


def test_press_gives_a_playable_clip_covering_pre_and_post(
    tmp_path: Path, broker: Mosquitto
) -> None:
    centre = Centre(broker.url, tmp_path / "centre").start()
    agent = AgentProcess(_config(tmp_path, broker.port)).start()
    try:
        time.sleep(PRE_S + 2 * SEG_S)  # let the in-memory pre-alarm buffer fill
        assert _video_on_disk(tmp_path / "state") == [], "video reached the disk before an alarm"
        agent.press("entrance")  # linked to entrance-cam only
        wait_for(lambda: _clips(tmp_path / "centre"), 30, "the clip at the centre")
        [clip] = _clips(tmp_path / "centre")
        assert clip.name == "entrance-cam.ts"
        verdict = json.loads(clip.with_name("entrance-cam.verify.json").read_text())
        assert verdict["verified"] is True, verdict  # chain and the box's signature hold
        seconds = duration(clip)
        assert PRE_S + POST_S - SEG_S <= seconds <= PRE_S + POST_S + 2 * SEG_S + 0.5, seconds
        assert _decode_all(clip) >= (PRE_S + POST_S - SEG_S) * 10  # 10 fps
        status: dict[str, Any] = agent.status() or {}
        assert status["cameras"]["entrance-cam"]["state"] == "streaming"
        assert status["video_bytes_written_today"] > 0
        # the centre confirmed the clip: nothing of it stays pinned on the box
        wait_for(lambda: (agent.status() or {})["outbox"]["clip"] == 0, 10, "chunks acked")
    finally:
        agent.close()
        centre.stop()


def test_clip_waits_out_a_dead_broker(tmp_path: Path, broker: Mosquitto) -> None:
    agent = AgentProcess(_config(tmp_path, broker.port)).start()
    centre = Centre(broker.url, tmp_path / "centre").start()
    try:
        time.sleep(PRE_S + SEG_S)
        broker.kill()
        agent.press("gym")
        time.sleep(POST_S + 2 * SEG_S)  # the clip is complete and spooled while the link is dead
        assert (agent.status() or {})["outbox"]["clip"] > 0
        broker.start()
        wait_for(lambda: _clips(tmp_path / "centre"), 30, "the clip after the outage")
        assert _clips(tmp_path / "centre")[0].name == "gym-cam.ts"
        assert duration(_clips(tmp_path / "centre")[0]) >= PRE_S + POST_S - SEG_S
    finally:
        agent.close()
        centre.stop()


@pytest.mark.parametrize("button, cameras", [("office", {"office-cam"})])
def test_only_linked_cameras_send_clips(
    tmp_path: Path, broker: Mosquitto, button: str, cameras: set[str]
) -> None:
    centre = Centre(broker.url, tmp_path / "centre").start()
    agent = AgentProcess(_config(tmp_path, broker.port)).start()
    try:
        time.sleep(PRE_S)
        agent.press(button)
        wait_for(lambda: _clips(tmp_path / "centre"), 30, "the clip")
        time.sleep(1)
        assert {p.stem for p in _clips(tmp_path / "centre")} == cameras
    finally:
        agent.close()
        centre.stop()


def test_spool_over_budget_drops_the_oldest_clip_never_an_alarm(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A long outage, many alarms, a tiny spool: every alarm still arrives; the oldest clips
    are dropped whole and the centre is told which, by a fault event."""
    cfg = _config(tmp_path, broker.port)
    data = yaml.safe_load(cfg.read_text())
    data["storage"]["max_gb"] = 0.0003  # 300 KB: about two clips at 200 kbit/s
    for cam in data["cameras"]:
        cam["bitrate_kbps"] = 200
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    centre = Centre(broker.url, tmp_path / "centre").start()
    agent = AgentProcess(cfg).start()
    try:
        time.sleep(PRE_S + SEG_S)
        broker.kill()
        for button in ("entrance", "gym", "office", "entrance", "gym"):
            agent.press(button)
            time.sleep(1.5)
        time.sleep(POST_S + 2 * SEG_S)
        broker.start()
        wait_for(
            lambda: len([a for a in centre.alarms() if a["kind"] == "panic"]) == 5,
            20,
            "all five panic alarms",
        )
        faults = [a for a in centre.alarms() if a["kind"] == "fault"]
        assert faults and all("dropped" in f["detail"] for f in faults)
        dropped = {f["detail"].split()[3] for f in faults}  # "clip of alarm <id> dropped: ..."
        panics = [a["event_id"] for a in centre.alarms() if a["kind"] == "panic"]
        assert dropped <= set(panics[:-1]), "the newest clip must not be the one dropped"
        wait_for(lambda: any(_clips(tmp_path / "centre")), 30, "the surviving clips")
        assert not any(p.parent.name in dropped for p in _clips(tmp_path / "centre"))
    finally:
        agent.close()
        centre.stop()
