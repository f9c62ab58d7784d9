"""``edge-agent demo``: the simulated school end to end, on one machine, in one command.

A private Mosquitto, the agent on the embedded simulated school (mock buttons, synthetic
cameras), and the centre's receiver, all real; the demo presses a button and shows what the
centre receives and how long it took. It writes its config to the state directory so that
``edge-agent simulate``/``status`` work from a second terminal while it runs.
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

from agent.box.daemon import Daemon
from agent.centre.service import run_receiver
from agent.config import default_config_text, load_config
from agent.config.model import Config
from agent.errors import AgentError
from agent.testing.broker import Mosquitto


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(state: Path | None, presses: int, exit_after: bool, stop: threading.Event) -> None:
    state = (state or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))).resolve()
    broker = Mosquitto(state / "broker")
    broker.start()
    cfg_path = state / "agent.yaml"
    data = yaml.safe_load(default_config_text())
    data["mqtt"]["port"] = broker.port
    data["storage"]["path"] = str(state / "agent")
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    cfg = load_config(cfg_path)

    received: list[tuple[float, dict[str, Any]]] = []
    arrived = threading.Condition()

    def on_alarm(alarm: dict[str, Any]) -> None:
        with arrived:
            received.append((time.monotonic(), alarm))
            arrived.notify_all()

    centre_stop = threading.Event()
    centre = threading.Thread(
        target=run_receiver, name="centre",
        args=(broker.url, cfg.mqtt.topic_prefix, state / "centre", "demo-centre", centre_stop),
        kwargs={"on_alarm": on_alarm}, daemon=True)
    daemon = Daemon(cfg)
    try:
        centre.start()
        daemon.start()
        _say(f"edge-agent demo: simulated school '{cfg.site.name}' ({cfg.site.id}), "
             f"{len(cfg.buttons)} buttons, {len(cfg.cameras)} cameras")
        _say(f"  broker   mosquitto on 127.0.0.1:{broker.port} (private to this demo)")
        _say(f"  agent    config {cfg_path}")
        _say(f"  centre   alarms and clips in {state / 'centre'}")
        _wait_online(daemon)
        _wait_buffers(daemon, cfg)
        for i in range(presses):
            button = cfg.buttons[i % len(cfg.buttons)]
            _say(f"\npressing '{button.id}' ({button.location}) ...")
            assert daemon.buttons is not None
            t0 = time.monotonic()
            daemon.buttons.simulate(button.id, True)
            with arrived:
                if not arrived.wait_for(partial(_more_than, received, i), timeout=10):
                    raise AgentError("the centre did not receive the alarm within 10 s")
            at, alarm = received[i]
            _say(f"  ЦОУ <- ALARM {alarm['site_id']}/{alarm['button_id']} "
                 f"\"{alarm['location']}\" kind={alarm['kind']} seq={alarm['seq']} "
                 f"pressed_at={alarm['pressed_at']}  ({(at - t0) * 1000:.1f} ms after the press)")
            daemon.buttons.simulate(button.id, False)
            _show_clips(cfg, state / "centre", alarm)
        if exit_after:
            return
        _say("\nTry, from another terminal:")
        _say(f"  edge-agent simulate press gym -c {cfg_path}")
        _say(f"  edge-agent status -c {cfg_path}")
        _say("Ctrl-C stops the demo.")
        stop.wait()
    finally:
        daemon.stop()
        centre_stop.set()
        centre.join(timeout=3)
        broker.stop()
        _say("demo stopped.")


def _show_clips(cfg: Config, store: Path, alarm: dict[str, Any]) -> None:
    """Wait for the pre/post-alarm clip of each linked camera and say what arrived."""
    cameras = cfg.cameras_for(alarm["button_id"])
    if not cameras:
        return
    wait_s = max(c.post_alarm_s for c in cameras) + 15
    _say(f"  recording {max(c.post_alarm_s for c in cameras):.0f} s after the press ...")
    folder = store / alarm["site_id"] / alarm["event_id"]
    deadline = time.monotonic() + wait_s
    pending = {c.id: c for c in cameras}
    while pending and time.monotonic() < deadline:
        for cid, cam in list(pending.items()):
            clip = folder / f"{cid}.ts"
            if clip.exists():
                with av.open(str(clip)) as container:
                    seconds = (container.duration or 0) / av.time_base
                _say(f"  ЦОУ <- CLIP {cid}: {seconds:.1f} s of video ({cam.pre_alarm_s:.0f} s "
                     f"before + {cam.post_alarm_s:.0f} s after the press) in {clip}")
                del pending[cid]
        time.sleep(0.2)
    for cid in pending:
        _say(f"  no clip from {cid} within {wait_s:.0f} s (see the agent's log)")


def _wait_buffers(daemon: Daemon, cfg: Config, timeout: float = 30.0) -> None:
    """A clip shows what happened before the press only once the ring holds that much."""
    if daemon.video is None or not cfg.cameras:
        return
    need = max(c.pre_alarm_s for c in cfg.cameras)
    _say(f"  cameras  filling the {need:.0f} s pre-alarm buffers (in memory, not on disk) ...")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = [sum(s.duration for s in ring.segments()) for ring in daemon.video.rings.values()]
        if held and min(held) >= need:
            return
        time.sleep(0.2)


def _more_than(items: list[Any], n: int) -> bool:
    return len(items) > n


def _wait_online(daemon: Daemon, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.uplink is not None and daemon.uplink.state == "online":
            return
        time.sleep(0.05)
    raise AgentError("the agent did not reach the demo broker within 10 s")
