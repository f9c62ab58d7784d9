"""``edge-agent demo``: the simulated school end to end, on one machine, in one command.

A simulated site (agent/testing/site.py, the same one the tests and benches run): a private
Mosquitto, the agent on the embedded simulated school (mock buttons, synthetic cameras) or on
``--config``'s school, and the centre's receiver, all real. The demo presses a button and shows
what the centre receives and how long it took. Its config is written to the state directory so
that ``edge-agent simulate``/``status`` work from a second terminal while it runs.

With ``--exit`` it is CI's check that the whole path works, so it fails (AgentError: one line,
exit 1) when an alarm or any linked camera's clip does not arrive; it used to exit 0 without a
clip, and CI could not fail.
"""

from __future__ import annotations

import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import av
import yaml

from agent.config.model import Config
from agent.errors import AgentError
from agent.testing.site import InProcessAgent, Site

ALARM_WAIT_S = 10.0
BUFFER_WAIT_S = 30.0


class DemoFailed(AgentError):
    """An alarm or a clip did not arrive: the path from the button to the centre is broken."""


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(
    state: Path | None,
    presses: int,
    exit_after: bool,
    stop: threading.Event,
    config: Path | None = None,
) -> None:
    state = (state or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))).resolve()
    arrived = threading.Condition()
    received: list[tuple[float, dict[str, Any]]] = []

    def on_alarm(alarm: dict[str, Any]) -> None:
        with arrived:
            received.append((time.monotonic(), alarm))
            arrived.notify_all()

    site = Site(state, on_alarm=on_alarm, **_school(config))
    try:
        site.start()
    except AssertionError as exc:  # the harness's "timed out waiting for ..."
        raise DemoFailed(f"the demo did not start: {exc}") from None
    try:
        box = site.agent
        assert isinstance(box, InProcessAgent)
        cfg = box.daemon.cfg
        _say(
            f"edge-agent demo: simulated school '{cfg.site.name}' ({cfg.site.id}), "
            f"{len(cfg.buttons)} buttons, {len(cfg.cameras)} cameras"
        )
        _say(f"  broker   mosquitto on 127.0.0.1:{site.broker.port} (private to this demo)")
        _say(f"  agent    config {site.config_path}")
        _say(f"  centre   alarms and clips in {state / 'centre'}")
        _wait_buffers(box, cfg)
        missing: list[str] = []
        for i in range(presses):
            button = cfg.buttons[i % len(cfg.buttons)]
            _say(f"\npressing '{button.id}' ({button.location}) ...")
            t0 = time.monotonic()
            box.press(button.id)
            with arrived:
                if not arrived.wait_for(partial(_more_than, received, i), ALARM_WAIT_S):
                    raise DemoFailed(
                        f"the centre did not receive the alarm of '{button.id}' "
                        f"within {ALARM_WAIT_S:.0f} s"
                    )
            at, alarm = received[i]
            _say(
                f"  ЦОУ <- ALARM {alarm['site_id']}/{alarm['button_id']} "
                f'"{alarm["location"]}" kind={alarm["kind"]} seq={alarm["seq"]} '
                f"pressed_at={alarm['pressed_at']}  ({(at - t0) * 1000:.1f} ms after the press)"
            )
            box.release(button.id)
            missing += _show_clips(cfg, box, state / "centre", alarm)
        if exit_after:
            if missing:
                raise DemoFailed(f"no clip from {', '.join(missing)} (see the log above)")
            return
        _say("\nTry, from another terminal:")
        _say(f"  edge-agent simulate press gym -c {site.config_path}")
        _say(f"  edge-agent status -c {site.config_path}")
        _say("Ctrl-C stops the demo.")
        stop.wait()
    finally:
        site.stop(check=False)
        _say("demo stopped.")


def _more_than(items: list[Any], n: int) -> bool:
    return len(items) > n


def _school(config: Path | None) -> dict[str, Any]:
    """The Site's sections: the embedded school's cameras, or ``config``'s school with the
    demo's own broker and storage (its mqtt and storage sections are not used)."""
    if config is None:
        return {"cameras": True}
    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    return {k: v for k, v in data.items() if k not in ("mqtt", "storage")} | {
        "cameras": data.get("cameras") or []
    }


def _failed(box: InProcessAgent, camera_id: str) -> bool:
    video = box.daemon.video
    return video is not None and video.cameras[camera_id].state == "failed"


def _wait_buffers(box: InProcessAgent, cfg: Config) -> None:
    """A clip shows what happened before the press only once the ring holds that much."""
    video = box.daemon.video
    if video is None or not cfg.cameras:
        return
    need = {c.id: c.pre_alarm_s for c in cfg.cameras}
    _say(
        f"  cameras  filling the {max(need.values()):.0f} s pre-alarm buffers (in memory, not "
        "on disk) ..."
    )
    deadline = time.monotonic() + BUFFER_WAIT_S
    while time.monotonic() < deadline and not all(
        _failed(box, cid) or sum(s.duration for s in video.rings[cid].segments()) >= s
        for cid, s in need.items()
    ):
        time.sleep(0.2)


def _show_clips(cfg: Config, box: InProcessAgent, store: Path, alarm: dict[str, Any]) -> list[str]:
    """Wait for the pre/post-alarm clip of each linked camera and say what arrived; the
    cameras whose clip did not (at once for a camera that failed)."""
    cameras = cfg.cameras_for(alarm["button_id"])
    if not cameras:
        return []
    post = max(c.post_alarm_s for c in cameras)
    wait_s = post + 15
    _say(f"  recording {post:.0f} s after the press ...")
    folder = store / alarm["site_id"] / alarm["event_id"]
    deadline = time.monotonic() + wait_s
    pending = {c.id: c for c in cameras}
    missing: list[str] = []
    while pending and time.monotonic() < deadline:
        for cid, cam in list(pending.items()):
            clip = folder / f"{cid}.ts"
            if clip.exists():
                with av.open(str(clip)) as container:
                    seconds = (container.duration or 0) / av.time_base
                _say(
                    f"  ЦОУ <- CLIP {cid}: {seconds:.1f} s of video ({cam.pre_alarm_s:.0f} s "
                    f"before + {cam.post_alarm_s:.0f} s after the press) in {clip}"
                )
            elif _failed(box, cid):
                _say(f"  no clip from {cid}: the camera failed (see the agent's log)")
                missing.append(cid)
            else:
                continue
            del pending[cid]
        time.sleep(0.2)
    for cid in pending:
        _say(f"  no clip from {cid} within {wait_s:.0f} s (see the agent's log)")
    return missing + list(pending)
