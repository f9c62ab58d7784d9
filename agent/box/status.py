"""What the running box says about itself: ``edge-agent status`` and the health message, the
retained status message, and systemd's one-line STATUS.

Read from any thread (the control socket's, the main thread's turn, the uplink's): each value
is a snapshot of fields their owners write, racy but harmless.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.box.walktest import WalkTest
from agent.clock import clock_synced, rfc3339, rfc3339_or_none
from agent.config.model import Config
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import PROTOCOL_VERSION, Status, dumps
from agent.delivery.uplink.link import Uplink

if TYPE_CHECKING:
    from agent.box.daemon import Daemon


def status(d: Daemon) -> dict[str, Any]:
    """The whole picture, as ``edge-agent status --json`` shows it (after ``start``)."""
    assert d.outbox is not None and d.uplink is not None and d.buttons is not None
    storage = Path(d.cfg.storage.path)
    disk = shutil.disk_usage(storage)
    return {
        "site_id": d.cfg.site.id,
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - d.started_at, 1),
        "thread_crashes": d.supervisor.status(),
        "clock_synced": clock_synced(),
        "uplink": _uplink(d.uplink, d.cfg),
        "outbox": {
            **d.outbox.depth(),
            "last_seq": d.outbox.last_seq(),
            "disk_error": d.outbox.disk_error,
        },
        "dc09": d.dc09.status() if d.dc09 else None,
        "last_alarm": d.button_alarms.last_alarm if d.button_alarms else None,
        "buttons": d.buttons.snapshot(),
        **(d.video.status() if d.video else {}),
        "test_mode_until": test_mode_until(d.walk_test),
        "indicator": str(d.indicators.pattern) if d.indicators else "off",
        "disk_free_mb": disk.free // 1_000_000,
        "cpu_temp_c": _cpu_temp(),
    }


def _uplink(uplink: Uplink, cfg: Config) -> dict[str, Any]:
    return {
        "state": str(uplink.state),
        "last_error": uplink.last_error,
        "sent": uplink.sent,
        "failures": uplink.failures,
        "last_ack_at": rfc3339_or_none(uplink.last_ack_at),
        "centre": {True: "listening", False: "NOT listening", None: "unknown"}[
            uplink.centre_present
        ],
        "broker": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
        "pacing": uplink.pacer.status(),
    }


def health(d: Daemon) -> bytes:
    """The health message: the status, the video's chain heads, when and in which version."""
    heads = d.video.chain_heads() if d.video else {}
    return dumps(
        {
            **status(d),
            "chain_heads": heads,
            "at": rfc3339(time.time()),
            "v": PROTOCOL_VERSION,
        }
    )


def summary(uplink: Uplink | None, outbox: Outbox | None) -> str:
    """systemd's STATUS= line, and the answer to the centre's ping."""
    if uplink is None or outbox is None:
        return "starting"
    depth = outbox.depth()
    return f"uplink {uplink.state}; outbox alarms={depth['alarm']} clips={depth['clip']}"


def status_message(cfg: Config, walk_test: WalkTest, state: str, reason: str) -> bytes:
    """The retained status message (also the will, with ``offline``)."""
    return Status(
        state=state,
        site_id=cfg.site.id,
        at=rfc3339(time.time()),
        agent_version=__version__,
        reason=reason,
        test_mode_until=test_mode_until(walk_test) if state == "online" else None,
    ).to_json()


def test_mode_until(walk_test: WalkTest) -> str | None:
    until = walk_test.until_wall()
    return rfc3339(until) if until is not None else None


def _cpu_temp() -> float | None:
    """The SoC temperature on a Pi (a hot box in a cupboard throttles, then fails)."""
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None
