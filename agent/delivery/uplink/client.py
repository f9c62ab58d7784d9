"""The paho client of a box: the one place its TLS and credentials are applied (the uplink
and selftest both connect with it)."""

from __future__ import annotations

import contextlib
import os
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.model import MqttConfig


def build_client(cfg: MqttConfig, client_id_suffix: str = "") -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id + client_id_suffix,
        protocol=mqtt.MQTTv5,
    )
    client.connect_timeout = 5.0
    if cfg.tls is not None:
        client.tls_set(
            ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
            certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
            keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )  # paho checks the server's hostname against its certificate by default
    if cfg.username is not None:
        client.username_pw_set(cfg.username, _read_secret(cfg.password_file))
    return client


def close_quietly(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _read_secret(path: os.PathLike[str] | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip()
