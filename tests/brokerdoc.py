"""The production broker of docs/broker.md, run as written, and MQTT 5 clients that keep every
answer it gives: shared by the broker security tests and the adversarial suite (tests/adversarial),
which attacks the centre through exactly this broker, as a box with only its own topics.

The mosquitto.conf and ACL blocks are read from docs/broker.md; only paths, ports and (if asked)
the topic prefix or the rate limit change, so the tested configuration cannot drift from the
documented one. The rate-limit plugin it loads is built from broker/ with broker/Makefile, once
per test process.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from agent.testing.broker import Mosquitto, free_port
from agent.testing.mqtt import MqttClient, Received, Tls, Will
from tests.conftest import REPO, wait_for
from tests.pki import Identity, Pki

DOC = REPO / "docs" / "broker.md"
PLUGIN = "/usr/local/lib/mosquitto/rate_limit.so"  # where docs/broker.md loads it from
# What broker/rate_limit.c includes: Debian's mosquitto-dev and libmosquitto-dev.
PLUGIN_HEADERS = ("mosquitto_broker.h", "mosquitto_plugin.h", "mosquitto.h")
_built: list[Path] = []


def rate_limit_plugin() -> Path:
    """broker/rate_limit.c built by broker/Makefile into a temporary directory, once per
    process, with warnings as errors. Skips the test only if make, the compiler or a header is
    missing (./install.sh --dev installs them), never because the build fails."""
    if _built:
        return _built[0]
    missing = [tool for tool in ("make", "cc") if shutil.which(tool) is None]
    missing += [h for h in PLUGIN_HEADERS if not (Path("/usr/include") / h).exists()]
    if missing:
        pytest.skip(
            f"cannot build broker/rate_limit.c, missing: {', '.join(missing)} "
            "(./install.sh --dev installs make, gcc, mosquitto-dev, libmosquitto-dev)"
        )
    out = Path(tempfile.mkdtemp(prefix="rate-limit-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    made = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO / "broker"),
            f"OUT={out}",
            "CFLAGS=-O2 -Wall -Wextra -Werror",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0 and not made.stderr, f"broker/rate_limit.c: {made.stderr}"
    _built.append(out / "rate_limit.so")
    return _built[0]


# --- the broker, configured from docs/broker.md ---------------------------------------------


def doc_blocks() -> dict[str, str]:
    """The ```conf blocks of docs/broker.md, by the path on their first line."""
    text = DOC.read_text(encoding="utf-8")
    return {m[1]: m[2] for m in re.finditer(r"```conf\n# (\S+)\n(.*?)```", text, re.DOTALL)}


@dataclass
class Broker:
    mosquitto: Mosquitto
    box_port: int
    centre_port: int

    def log(self) -> str:
        return (self.mosquitto.workdir / "mosquitto.log").read_text(errors="replace")

    def limited(self) -> set[str]:
        """The clients whose messages the rate limit dropped, by its log lines."""
        return set(re.findall(r"rate_limit: client (\S+) sent over", self.log()))

    def reload(self) -> None:
        """SIGHUP, as `systemctl reload mosquitto` sends; returns once the broker has reloaded."""
        assert self.mosquitto.proc is not None
        done = self.log().count("Reloading config.") + 1
        os.kill(self.mosquitto.proc.pid, signal.SIGHUP)
        wait_for(lambda: self.log().count("Reloading config.") >= done, 5, "the reload")


def start_broker(
    workdir: Path,
    pki: Pki,
    *,
    server: Identity | None = None,
    crl: Path | None = None,
    without: tuple[str, ...] = (),
    prefix: str = "schools",
    log_info: bool = True,
    limits: dict[str, str] | None = None,
) -> Broker:
    """Mosquitto with the documented configuration; `without` drops lines, to show they matter;
    `prefix` replaces the topic prefix in the ACLs, as docs/broker.md says to; `limits` sets
    documented `plugin_opt_` values of the rate limit (``{"messages_burst": "100"}``)."""
    workdir.mkdir(parents=True)
    blocks = doc_blocks()
    server = server or pki.server
    box_port, centre_port = free_port(), free_port()
    files = {
        "/etc/mosquitto/certs/broker.crt": server.cert,
        "/etc/mosquitto/certs/broker.key": server.key,
        "/etc/mosquitto/ca_certificates/box-ca.crt": pki.box_ca,
        "/etc/mosquitto/ca_certificates/box-ca.crl": crl or pki.box_crl,
        "/etc/mosquitto/ca_certificates/centre-ca.crt": pki.centre_ca,
        PLUGIN: rate_limit_plugin(),
    }
    for name in ("box.acl", "centre.acl"):
        acl = workdir / name
        acl.write_text(blocks[f"/etc/mosquitto/{name}"].replace(" schools/", f" {prefix}/"))
        files[f"/etc/mosquitto/{name}"] = acl
    conf = blocks["/etc/mosquitto/conf.d/schools.conf"]
    for line in without:
        assert f"\n{line}\n" in conf, f"docs/broker.md has no line {line!r}"
        conf = conf.replace(f"\n{line}\n", "\n")
    for option, value in (limits or {}).items():
        conf, n = re.subn(
            rf"^plugin_opt_{option} \S+$", f"plugin_opt_{option} {value}", conf, flags=re.M
        )
        assert n == 1, f"docs/broker.md has no line plugin_opt_{option}"
    for path, local in files.items():
        conf = conf.replace(f" {path}\n", f" {local}\n")
    conf, boxes = re.subn(r"^listener 8883$", f"listener {box_port} 127.0.0.1", conf, flags=re.M)
    conf, centres = re.subn(
        r"^listener 8884 \S+$", f"listener {centre_port} 127.0.0.1", conf, flags=re.M
    )
    assert (boxes, centres) == (1, 1) and "/etc/" not in conf and "/usr/" not in conf, (
        "docs/broker.md changed: update me"
    )
    broker = Mosquitto(
        workdir,
        port=box_port,
        listeners=conf,
        extra_conf="log_type notice\nlog_type information" if log_info else "",
    )
    broker.start()
    return Broker(broker, box_port, centre_port)


# --- MQTT 5 clients that record what the broker answers ---------------------------------------


def peer_options(
    pki: Pki, identity: Identity | None, *, will_topic: str | None = None, tls: bool = True
) -> dict[str, Any]:
    """MqttClient options for a client with a certificate (or none) that keeps every answer of
    the broker, and does not reconnect: a peer that is refused or replaced stays gone, so tests
    see it (``connack``, ``error``, ``gone``)."""
    return {
        "host": "localhost",
        "keepalive": 5,
        "reconnect": None,
        "tls": Tls(
            pki.box_ca, identity.cert if identity else None, identity.key if identity else None
        )
        if tls
        else None,
        "will": Will(will_topic, b"offline (will)") if will_topic else None,
    }


def peer(
    port: int,
    pki: Pki,
    identity: Identity | None,
    *,
    client_id: str = "",
    username: str | None = None,
    will_topic: str | None = None,
    protocol: MQTTProtocolVersion = mqtt.MQTTv5,
    tls: bool = True,
) -> MqttClient:
    """Such a client (see peer_options), not connected yet."""
    return MqttClient(
        port,
        client_id=client_id,
        username=username,
        protocol=protocol,
        **peer_options(pki, identity, will_topic=will_topic, tls=tls),
    )


def pairs(messages: list[Received]) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in messages]
