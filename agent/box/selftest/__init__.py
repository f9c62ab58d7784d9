"""``edge-agent selftest``: is this box ready to protect a school? A table a technician can act on.

Each check says PASS or FAIL and, when it fails, what to do. It is safe to run while the agent
is running: the buttons are then read from the running agent rather than by opening the pins
(which the agent holds), and the broker from the agent's own connection. The probes, by what
they look at: host.py (disk, clock), wiring.py (buttons, cameras), centre.py (broker, upload),
dc09.py (the DC-09 receivers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.box import control
from agent.box.selftest import centre, dc09, host, wiring
from agent.box.selftest.check import Check, format_table
from agent.config.model import Config
from agent.errors import AgentError

__all__ = ["Check", "format_table", "run_checks"]


def run_checks(cfg: Config, camera_timeout_s: float = 5.0) -> list[Check]:
    running = _running_status(cfg)
    checks = [host.disk(cfg), host.clock(), *wiring.buttons(cfg, running)]
    checks += [wiring.camera(cam, camera_timeout_s) for cam in cfg.cameras]
    checks.append(centre.broker_of_running(running) if running else centre.broker(cfg))
    if running:
        checks.append(centre.upload(running))
    if cfg.dc09 is not None:
        settings = cfg.dc09.settings
        checks += [dc09.receiver(settings, r, cfg.site.name) for r in settings.receivers]
    return checks


def _running_status(cfg: Config) -> dict[str, Any] | None:
    """The running agent's own view. A second connection under the site's identity would
    replace the agent's (the production broker pins client ids to certificates)."""
    try:
        reply = control.call(control.socket_path(Path(cfg.storage.path)), {"cmd": "status"}, 5)
        status: dict[str, Any] = reply["status"]
        return status
    except (AgentError, KeyError):
        return None
