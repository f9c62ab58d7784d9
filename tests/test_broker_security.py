"""The production broker configuration of docs/broker.md, run as written on Debian's Mosquitto.

The mosquitto.conf and ACL blocks are read from docs/broker.md; only paths and ports change (the
listeners bind to 127.0.0.1 on free ports). So each test here checks a statement of that file
against the real broker: what a box may publish and read, what the centre may do, who cannot
connect at all, and what Mosquitto 2.0.11 actually answers an MQTT 5 client it refuses.

The agent itself runs in-process (agent.box.daemon.Daemon) for the two end-to-end cases: it connects
with its school's certificate and an alarm reaches the centre, and it refuses a broker whose
certificate names another host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from agent.box.daemon import Daemon
from tests.brokerdoc import Broker, pairs, peer, start_broker
from tests.conftest import InProcessAgent, MqttClient, wait_for, write_config
from tests.pki import Identity, Pki, make_pki

pytestmark = pytest.mark.timeout(30)

NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    b = start_broker(tmp_path / "broker", pki)
    yield b
    b.mosquitto.kill()
    assert not b.limited(), "the rate limit dropped an honest client's messages"


@pytest.fixture
def peers(pki: Pki) -> Iterator[Callable[..., MqttClient]]:
    """peers(port, identity, *topics, **options) -> a connected peer, subscribed to
    ``topics`` one by one (what the broker granted is not checked), closed after the test."""
    made: list[MqttClient] = []

    def connect(port: int, identity: Identity | None, *topics: str, **options: Any) -> MqttClient:
        client = peer(port, pki, identity, **options)
        made.append(client)
        client.connect()
        for topic in topics:
            client.subscribe(topic)
        return client

    yield connect
    for client in made:
        client.close()


def granted(codes: list[ReasonCode]) -> list[str]:
    return [str(c) for c in codes]


def fence(centre: MqttClient, site: str = "school-b") -> None:
    """Publish a marker the centre reads and wait for it: everything the broker took before it
    has been delivered (or refused) by then, so an absent message is absent, not late."""
    marker = f"fence {time.monotonic()}".encode()
    assert not centre.publish(f"schools/{site}/cmd", marker).is_failure
    centre.wait(f"schools/{site}/cmd", payload=marker)


# --- the agent end to end ---------------------------------------------------------------------


def start_agent(
    agents: list[InProcessAgent], tmp_path: Path, pki: Pki, port: int, site: str = "school-a"
) -> Daemon:
    """The agent with its school's certificate, in this process (stopped by ``agents``)."""
    ident = pki.client(site)
    path = write_config(
        tmp_path / "agent.yaml",
        port,
        tmp_path / "state",
        site={"id": site, "name": site},
        mqtt={
            "host": "localhost",
            "port": port,
            "keepalive_s": 5,
            "tls": {
                "ca_file": str(pki.box_ca),
                "cert_file": str(ident.cert),
                "key_file": str(ident.key),
            },
        },
    )
    agents.append(InProcessAgent(path))
    return agents[-1].start(online_s=None).daemon


@pytest.fixture
def agents() -> Iterator[list[InProcessAgent]]:
    running: list[InProcessAgent] = []
    yield running
    for agent in running:
        agent.stop()


def test_agent_publishes_an_alarm_over_mutual_tls(
    tmp_path: Path,
    pki: Pki,
    broker: Broker,
    peers: Callable[..., MqttClient],
    agents: list[InProcessAgent],
) -> None:
    centre = peers(broker.centre_port, pki.client("centre"), client_id="centre-receiver")
    assert centre.online, centre.error
    assert not any(c.is_failure for c in centre.subscribe("schools/+/alarm"))
    daemon = start_agent(agents, tmp_path, pki, broker.box_port)
    assert daemon.buttons is not None and daemon.uplink is not None and daemon.outbox is not None
    uplink, outbox = daemon.uplink, daemon.outbox
    wait_for(lambda: uplink.state == "online", 5, f"online ({uplink.last_error})")

    [result] = daemon.buttons.simulate("entrance", True)
    centre.wait("schools/school-a/alarm")
    [(_topic, payload)] = pairs(centre.received("schools/school-a/alarm"))
    alarm = json.loads(payload)
    assert alarm["event_id"] == result["event_id"] and alarm["site_id"] == "school-a"
    wait_for(lambda: outbox.depth()["alarm"] == 0, 5, "the PUBACK to empty the outbox")
    daemon.buttons.simulate("entrance", False)


def test_agent_refuses_a_broker_certificate_for_another_name(
    tmp_path: Path, pki: Pki, peers: Callable[..., MqttClient], agents: list[InProcessAgent]
) -> None:
    evil = start_broker(tmp_path / "evil", pki, server=pki.evil_server)
    try:
        # The chain is valid (the box CA signed it): only the name is wrong. Without the
        # hostname check a box would talk to this broker.
        lax = peer(evil.box_port, pki, pki.client("school-a"))
        lax.client.tls_insecure_set(True)
        assert lax.connect().online, lax.error
        lax.close()

        daemon = start_agent(agents, tmp_path, pki, evil.box_port)
        assert daemon.buttons is not None and daemon.uplink is not None
        assert daemon.outbox is not None
        uplink = daemon.uplink
        daemon.buttons.simulate("entrance", True)
        states = set()
        deadline = time.monotonic() + 2.5  # an alarm waits: the uplink retries every second
        while time.monotonic() < deadline:
            states.add(str(uplink.state))
            time.sleep(0.01)
        assert "online" not in states
        assert "certificate verify failed" in uplink.last_error, uplink.last_error
        assert "Hostname mismatch" in uplink.last_error, uplink.last_error
        assert "localhost" in uplink.last_error, uplink.last_error
        assert daemon.outbox.depth()["alarm"] == 1
    finally:
        evil.mosquitto.kill()


def test_agent_says_why_the_broker_refuses_its_certificate(
    tmp_path: Path, pki: Pki, broker: Broker, agents: list[InProcessAgent]
) -> None:
    daemon = start_agent(agents, tmp_path, pki, broker.box_port, site="school-c")  # revoked
    assert daemon.buttons is not None and daemon.uplink is not None
    uplink = daemon.uplink
    daemon.buttons.simulate("entrance", True)
    # The alert can be lost to a TCP reset when the CONNECT crosses it ("EOF occurred in
    # violation of protocol"), so allow a few attempts (one a second while an alarm waits).
    wait_for(
        lambda: "certificate revoked" in uplink.last_error,
        10,
        f"the reason in last_error (it says {uplink.last_error!r})",
    )
    assert uplink.state != "online"


# --- what a box may do, and what it may not ---------------------------------------------------


def test_a_site_cannot_publish_as_another_site(
    pki: Pki, broker: Broker, peers: Callable[..., MqttClient]
) -> None:
    centre = peers(
        broker.centre_port, pki.client("centre"), "schools/#", client_id="centre-receiver"
    )
    # The CONNECT username is ignored: the certificate's CN is the username.
    a = peers(
        broker.box_port,
        pki.client("school-a"),
        username="school-b",
        will_topic="schools/school-b/status",
    )
    assert a.online, a.error

    refused = a.publish("schools/school-b/alarm", b"spoofed alarm")
    assert refused.value == NOT_AUTHORIZED and str(refused) == "Not authorized"
    assert not a.publish("schools/school-a/alarm", b"own alarm").is_failure

    a.drop()  # the will, on school B's status topic, is checked against the ACL too
    time.sleep(0.5)
    # An MQTT 3.1.1 client cannot be told: it gets an ordinary PUBACK, and the message is dropped.
    a311 = peers(broker.box_port, pki.client("school-a"), protocol=mqtt.MQTTv311)
    assert not a311.publish("schools/school-b/alarm", b"spoofed by 3.1.1").is_failure
    fence(centre)
    assert [m.topic for m in centre.received("schools/school-b/#")] == ["schools/school-b/cmd"]
    assert pairs(centre.received("schools/school-a/alarm")) == [
        ("schools/school-a/alarm", b"own alarm")
    ]


def test_a_site_cannot_read_another_sites_video_or_commands(
    pki: Pki, broker: Broker, peers: Callable[..., MqttClient]
) -> None:
    centre = peers(
        broker.centre_port, pki.client("centre"), "schools/#", client_id="centre-receiver"
    )
    a = peers(broker.box_port, pki.client("school-a"))
    b = peers(broker.box_port, pki.client("school-b"), "schools/school-b/cmd")
    # Mosquitto 2.0's ACL file does not check SUBSCRIBE: the subscription is granted ...
    assert granted(a.subscribe("schools/school-b/clip/#")) == ["Granted QoS 1"]
    assert granted(a.subscribe("schools/school-b/cmd")) == ["Granted QoS 1"]
    assert granted(a.subscribe("schools/#")) == ["Granted QoS 1"]  # covers its own cmd too

    assert not b.publish("schools/school-b/clip/entrance-cam", b"video chunk").is_failure
    assert not centre.publish("schools/school-b/cmd", b"command for B").is_failure
    centre.wait("schools/school-b/clip/entrance-cam")
    b.wait("schools/school-b/cmd", payload=b"command for B")
    # ... and `read` is checked on every message before delivery, so nothing of B's arrives.
    assert not centre.publish("schools/school-a/cmd", b"command for A").is_failure
    a.wait("schools/school-a/cmd", payload=b"command for A")
    assert pairs(a.received()) == [("schools/school-a/cmd", b"command for A")]


def test_only_the_centre_can_command(
    pki: Pki, broker: Broker, peers: Callable[..., MqttClient]
) -> None:
    centre = peers(
        broker.centre_port, pki.client("centre"), "schools/+/cmd", client_id="centre-dispatch"
    )
    a = peers(broker.box_port, pki.client("school-a"), "schools/school-a/cmd")
    b = peers(broker.box_port, pki.client("school-b"), "schools/school-b/cmd")

    assert a.publish("schools/school-b/cmd", b"from A").value == NOT_AUTHORIZED
    assert a.publish("schools/school-a/cmd", b"A to itself").value == NOT_AUTHORIZED
    # CN "centre" signed by the box CA (a mistake): on the box listener it is only a box.
    fake = peers(broker.box_port, pki.misissued_centre)
    assert fake.online, fake.error
    assert fake.publish("schools/school-b/cmd", b"from a fake centre").value == NOT_AUTHORIZED
    fake.subscribe("schools/#")

    assert not centre.publish("schools/school-a/cmd", b"from the centre").is_failure
    a.wait("schools/school-a/cmd", payload=b"from the centre")
    fence(centre, "school-b")
    assert pairs(a.received()) == [("schools/school-a/cmd", b"from the centre")]
    assert pairs(b.received()) == pairs(centre.received("schools/school-b/cmd"))
    assert fake.received() == []
    # The centre reads and commands; it cannot raise an alarm for a school.
    assert centre.publish("schools/school-a/alarm", b"x").value == NOT_AUTHORIZED


def test_no_valid_certificate_no_connection(
    pki: Pki, broker: Broker, peers: Callable[..., MqttClient]
) -> None:
    box, centre = broker.box_port, broker.centre_port
    attempts = {
        "no certificate, box listener": peers(box, None),
        "no certificate, centre listener": peers(centre, None),
        "box certificate, centre listener": peers(centre, pki.client("school-a")),
        "centre certificate, box listener": peers(box, pki.client("centre")),
        "revoked box certificate": peers(box, pki.client("school-c")),
        "plain MQTT to the TLS port": peers(box, None, tls=False),
    }
    for what, client in attempts.items():
        assert client.gone.is_set() and client.connack is None, f"{what}: {client.connack}"
    assert "peer did not return a certificate" in broker.log()
    # A valid box certificate on the same broker does connect: the refusals are the certificates.
    assert peers(box, pki.client("school-a")).online


# --- client ids -------------------------------------------------------------------------------


def test_a_site_cannot_take_over_another_sites_connection(
    pki: Pki, broker: Broker, peers: Callable[..., MqttClient]
) -> None:
    centre = peers(
        broker.centre_port, pki.client("centre"), "schools/+/status", client_id="centre-receiver"
    )
    b = peers(broker.box_port, pki.client("school-b"), client_id="edge-agent-school-b")
    a = peers(broker.box_port, pki.client("school-a"), client_id="edge-agent-school-b")
    assert a.online and b.online
    time.sleep(0.5)
    assert not b.gone.is_set()
    assert not b.publish("schools/school-b/alarm").is_failure

    # The other side of binding the client id to the certificate: a second connection with the
    # same box certificate (a diagnostic run beside the agent) replaces the first one, and the
    # broker publishes the first one's will.
    agent = peers(
        broker.box_port,
        pki.client("school-a"),
        client_id="edge-agent-school-a",
        will_topic="schools/school-a/status",
    )
    second = peers(broker.box_port, pki.client("school-a"), client_id="edge-agent-school-a-test")
    assert second.online
    wait_for(agent.gone.is_set, 5, "the first connection to be replaced")
    centre.wait("schools/school-a/status", payload=b"offline (will)")


def test_without_username_as_clientid_a_site_can_disconnect_another(
    tmp_path: Path, pki: Pki, peers: Callable[..., MqttClient]
) -> None:
    """Why docs/broker.md sets use_username_as_clientid: remove it and the takeover works."""
    lax = start_broker(tmp_path / "lax", pki, without=("use_username_as_clientid true",))
    try:
        b = peers(lax.box_port, pki.client("school-b"), client_id="edge-agent-school-b")
        assert b.online
        peers(lax.box_port, pki.client("school-a"), client_id="edge-agent-school-b")
        wait_for(b.gone.is_set, 5, "school B to be disconnected by school A")
    finally:
        lax.mosquitto.kill()


# --- revocation -------------------------------------------------------------------------------


def test_revocation_applies_on_reload_and_an_expired_crl_locks_everyone_out(
    tmp_path: Path, pki: Pki, peers: Callable[..., MqttClient]
) -> None:
    crl = pki.write_crl(tmp_path / "box-ca.crl")
    broker = start_broker(tmp_path / "broker", pki, crl=crl)
    try:
        live = peers(broker.box_port, pki.client("school-a"))
        assert live.online

        pki.write_crl(crl, ("school-a",))
        broker.reload()
        assert not peers(broker.box_port, pki.client("school-a")).online
        # A connection made before the revocation stays open until it drops.
        assert live.online and not live.publish("schools/school-a/alarm").is_failure

        assert peers(broker.box_port, pki.client("school-b")).online
        pki.write_crl(crl, expired=True)
        broker.reload()
        assert not peers(broker.box_port, pki.client("school-b")).online
    finally:
        broker.mosquitto.kill()


# --- shared subscriptions ---------------------------------------------------------------------


def test_a_box_in_the_centres_share_group_makes_alarms_disappear(
    pki: Pki, broker: Broker, peers: Callable[..., MqttClient]
) -> None:
    """Why docs/broker.md says the centre must not take alarms through a shared subscription."""
    centre = peers(
        broker.centre_port,
        pki.client("centre"),
        "$share/centre/schools/+/alarm",
        client_id="centre-receiver",
    )
    centre.subscribe("schools/+/cmd")  # for the fence
    intruder = peers(broker.box_port, pki.client("school-a"))
    assert granted(intruder.subscribe("$share/centre/schools/+/alarm")) == ["Granted QoS 1"]
    b = peers(broker.box_port, pki.client("school-b"))
    for i in range(6):
        assert not b.publish("schools/school-b/alarm", f"alarm {i}".encode()).is_failure
    fence(centre)
    assert intruder.received() == []
    assert len(centre.received("schools/+/alarm")) == 3  # every second alarm is lost


# --- sizes ------------------------------------------------------------------------------------


def test_a_packet_over_max_packet_size_disconnects_its_sender(
    pki: Pki, broker: Broker, peers: Callable[..., MqttClient]
) -> None:
    """The largest chunk the protocol allows passes; anything larger costs its sender the
    connection, before the broker keeps any of it (docs/broker.md, max_packet_size)."""
    centre = peers(
        broker.centre_port, pki.client("centre"), "schools/+/clip/+", client_id="centre-receiver"
    )
    box = peers(broker.box_port, pki.client("school-a"))
    largest = b"h" * 1024 + b"\n" + b"v" * 256 * 1024
    assert not box.publish("schools/school-a/clip/entrance-cam", largest).is_failure
    centre.wait("schools/school-a/clip/entrance-cam", payload=largest)
    box.client.publish("schools/school-a/clip/entrance-cam", largest + b"v" * 4096, qos=1)
    wait_for(box.gone.is_set, 5, "the broker to disconnect the sender")
    assert len(centre.received("schools/+/clip/+")) == 1


# --- the rate limit ---------------------------------------------------------------------------


def flood(client: MqttClient, topic: str, n: int, payload: bytes = b"x") -> list[ReasonCode]:
    """``n`` QoS 1 messages back to back; the broker's answer to each."""
    mids = [client.send(topic, payload) for _ in range(n)]
    return [client.wait_ack(mid, 20) for mid in mids]


def test_the_rate_limit_drops_one_boxs_flood_and_passes_everyone_else(
    tmp_path: Path, pki: Pki, peers: Callable[..., MqttClient]
) -> None:
    """docs/broker.md, the rate limit (broker/rate_limit.c), with a budget a Python client
    outruns: the box over it loses what is over it, told 0x87 (MQTT 5); another box's
    messages all pass, as do the centre's, which the limit never counts; the log names the
    box."""
    broker = start_broker(
        tmp_path / "broker", pki, limits={"messages_per_second": "20", "messages_burst": "100"}
    )
    try:
        centre = peers(broker.centre_port, pki.client("centre"), client_id="centre-receiver")
        centre.subscribe("schools/+/alarm")
        centre.subscribe("schools/+/cmd")  # for the fence
        hostile = peers(broker.box_port, pki.client("school-a"))
        honest = peers(broker.box_port, pki.client("school-b"))
        honest.subscribe("schools/school-b/receipt")
        start = time.monotonic()
        mids = [hostile.send("schools/school-a/alarm", b"flood") for _ in range(1000)]
        honest_answers = flood(honest, "schools/school-b/alarm", 50)
        answers = [hostile.wait_ack(mid, 20) for mid in mids]
        elapsed = time.monotonic() - start
        passed = sum(not a.is_failure for a in answers)
        assert 100 <= passed <= 100 + 20 * elapsed + 1, (passed, elapsed)
        assert {a.value for a in answers if a.is_failure} == {NOT_AUTHORIZED}
        assert not any(a.is_failure for a in honest_answers)
        centre.wait("schools/school-b/alarm", 50)
        centre.wait("schools/school-a/alarm", passed)
        receipts = flood(centre, "schools/school-b/receipt", 1000)  # the centre: never limited
        assert not any(a.is_failure for a in receipts)
        honest.wait("schools/school-b/receipt", 1000)
        fence(centre)
        assert len(centre.received("schools/school-a/alarm")) == passed
        wait_for(lambda: broker.limited(), 5, "the rate limit's log line")
        assert broker.limited() == {"school-a"}, broker.log()
    finally:
        broker.mosquitto.kill()


def test_the_rate_limit_counts_bytes_and_outlives_a_reconnect(
    tmp_path: Path, pki: Pki, peers: Callable[..., MqttClient]
) -> None:
    """The byte budget (topic and payload) holds as the message budget does, and belongs to
    the box, not to its connection: reconnecting does not refill it (a box that could would
    get a fresh burst per TLS handshake)."""
    broker = start_broker(
        tmp_path / "broker", pki, limits={"bytes_per_second": "10000", "bytes_burst": "250000"}
    )
    try:
        box = peers(broker.box_port, pki.client("school-a"))
        chunk = b"v" * 100_000
        answers = flood(box, "schools/school-a/clip/cam", 4, chunk)
        assert [a.is_failure for a in answers] == [False, False, True, True]
        box.close()
        again = peers(broker.box_port, pki.client("school-a"))
        assert again.publish("schools/school-a/clip/cam", chunk).value == NOT_AUTHORIZED
        assert not again.publish("schools/school-a/clip/cam", b"small").is_failure
        wait_for(lambda: broker.limited(), 5, "the rate limit's log line")
        assert broker.limited() == {"school-a"}
    finally:
        broker.mosquitto.kill()
