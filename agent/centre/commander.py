"""Commands from the centre to a box: the signing key and ``send_command``.

The centre's Ed25519 key signs commands for every school, so it lives with the operator who
commands, not with the receiver: the receiver parses what 7,600 boxes send, and a flaw there must
not hand out the key. By default it is ``~/.config/edge-agent/centre.key`` of the commanding user
(directory 0700, key 0600, refused by agent/commands/keys.py if others can read it), never in the
receiver's store; the receiver refuses to start while a ``centre.key`` lies in its store.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.centre.ledger import Ledger
from agent.centre.link import Endpoint
from agent.commands.keys import load_private_key, sign_command
from agent.delivery.protocol import Topics
from agent.errors import AgentError

KEY_NAME = "centre.key"


def default_key_dir() -> Path:
    """Where ``central keygen`` puts the key pair and the commands find the private key."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edge-agent"


def refuse_key_in_store(store: Path) -> None:
    """The receiver's store holds what boxes send; the signing key must never sit there."""
    if (store / KEY_NAME).exists():
        raise AgentError(
            f"{store / KEY_NAME} is the centre's signing key, in the receiver's store: move it "
            f"to the commanding user's {default_key_dir() / KEY_NAME} (mode 0600) or give "
            "--key, then start the receiver again"
        )


def site_of_event(store: Path, event_id: str, site: str | None = None) -> str:
    """Which site raised this alarm, from the receiver's ledger. Alarms are keyed by (site,
    event): if two sites sent the same event id, the operator must say which with --site."""
    ledger = Ledger.open(store)
    try:
        sites = ledger.sites_of(event_id)
    finally:
        ledger.close()
    if site is not None:
        if site not in sites:
            raise AgentError(f"site {site} has no alarm {event_id} in {store}")
        return site
    if not sites:
        raise AgentError(f"no alarm {event_id} in {store}; is --store the receiver's store?")
    if len(sites) > 1:
        raise AgentError(
            f"alarm {event_id} was sent by several sites ({', '.join(sites)}); "
            "one copied the other's id: say which with --site"
        )
    return sites[0]


def send_command(
    broker: Endpoint | str,
    topic_prefix: str,
    site_id: str,
    key_file: Path,
    name: str,
    args: dict[str, Any],
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Sign a command with the centre's key, publish it, and wait for the box's result.
    ``broker``: an Endpoint, or a plain ``mqtt://`` URL."""
    endpoint = broker if isinstance(broker, Endpoint) else Endpoint.parse(broker)
    payload = sign_command(load_private_key(key_file), site_id, name, args)
    command_id = json.loads(payload)["id"]
    topics = Topics(topic_prefix, site_id)
    result: list[dict[str, Any]] = []
    got = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("id") == command_id:
            result.append(doc)
            got.set()

    refused: list[str] = []  # why the broker closed the connection before we were in

    def on_disconnect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not subscribed.is_set():
            refused.append(str(rc))
            subscribed.set()
            c.disconnect()  # no reconnect

    client = endpoint.client("")
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(topics.cmd_result, qos=1)
    client.on_disconnect = on_disconnect
    try:
        client.connect(endpoint.host, endpoint.port, keepalive=10)
    except OSError as exc:
        raise AgentError(f"cannot reach the broker {endpoint}: {exc}") from exc
    client.loop_start()
    try:
        if not subscribed.wait(timeout_s) or refused:
            raise AgentError(
                f"the broker {endpoint} did not let us in "
                f"({refused[0] if refused else 'no answer'}): check the centre's "
                "certificate (--tls-cert, --tls-key) and the broker's ACL"
            )
        client.publish(topics.cmd, payload, qos=1)  # never retained: a reconnect never replays
        if not got.wait(timeout_s):
            raise AgentError(
                f"no result from {site_id} within {timeout_s:.0f} s: is the box "
                "online and does it have the centre's public key?"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]
