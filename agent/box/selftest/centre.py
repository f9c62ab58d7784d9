"""The way to the centre: the broker, and the school's upload as the running agent measured it.

While the agent runs, its own view is taken: a second connection under the site's identity
would replace the agent's (the production broker pins client ids to certificates). Otherwise a
connection of the selftest's own tries the broker.
"""

from __future__ import annotations

import threading
from typing import Any

from agent.box.selftest.check import Check
from agent.config.model import Config
from agent.delivery.uplink.pacing import describe


def broker(cfg: Config) -> Check:
    from agent.delivery.uplink.client import build_client

    name = "broker"
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port} ({'TLS' if cfg.mqtt.tls else 'plain'})"
    done = threading.Event()
    outcome: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        outcome.append("" if not rc.is_failure else f"refused: {rc}")
        done.set()

    try:
        client = build_client(cfg.mqtt, "-selftest")
        client.on_connect = on_connect
        client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=10)
    except (OSError, ValueError) as exc:
        return Check(
            name,
            False,
            f"{where}: {exc}",
            "check mqtt.host/port, the network, and the TLS files (CA, certificate)",
        )
    client.loop_start()
    try:
        if not done.wait(5):
            return Check(
                name,
                False,
                f"{where}: no answer to CONNECT in 5 s",
                "a firewall may be dropping the traffic",
            )
    finally:
        client.disconnect()
        client.loop_stop()
    if outcome[0]:
        return Check(
            name,
            False,
            f"{where}: {outcome[0]}",
            "check the username/password or the client certificate with the centre",
        )
    return Check(name, True, f"{where}: connected")


def broker_of_running(status: dict[str, Any]) -> Check:
    up = status["uplink"]
    if up["state"] == "online":
        return Check("broker", True, f"{up['broker']}: the running agent is online")
    return Check(
        "broker",
        False,
        f"{up['broker']}: the running agent is {up['state']}: {up['last_error']}",
        "check the network, mqtt.host/port and the TLS files",
    )


def upload(status: dict[str, Any]) -> Check:
    """What the running agent measured of the school's upload: only it can, while video
    uploads (a second connection would replace the agent's)."""
    pacing = status["uplink"].get("pacing") or {}
    detail = describe(pacing)
    if pacing.get("mode") != "auto" and not pacing.get("ceiling_kbps"):
        return Check(
            "upload",
            False,
            f"{detail}: an alarm can wait behind our own video in "
            "the modem's buffer, 0.5 s or more",
            "remove uplink.auto_rate: false from the config",
        )
    if pacing.get("upload_kbps") == 0:
        return Check(
            "upload",
            False,
            detail,
            "check the school's router and its uplink; the "
            "broker line above says whether the connection is up",
        )
    if (pacing.get("alarm_wait_ms") or 0) > 1000:
        return Check(
            "upload",
            False,
            detail,
            "the upload is very slow or something else at "
            "the school fills it: check the router; uplink.max_kbps caps our video",
        )
    return Check("upload", True, detail)
