"""The centre's MQTT connections: where they go, and that what other threads publish goes out."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.centre.link import Endpoint, Link, Message
from agent.errors import AgentError
from agent.testing.broker import Mosquitto
from tests.conftest import subscriber, wait_for


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtts://broker.example.org", "broker.example.org", 8883, True),  # was 1883 for commands
        ("mqtts://broker.example.org:8884", "broker.example.org", 8884, True),
        ("mqtt://127.0.0.1", "127.0.0.1", 1883, False),
    ],
)
def test_endpoint_ports(url: str, host: str, port: int, tls: bool) -> None:
    endpoint = Endpoint.parse(url)
    assert (endpoint.host, endpoint.port, endpoint.tls) == (host, port, tls)


@pytest.mark.parametrize(
    ("url", "files", "message"),
    [
        ("http://x", {}, "--broker must look like"),
        ("mqtts://x:99999", {}, "--broker must look like"),
        ("mqtts://x", {"cert_file": Path("c.pem")}, "go together"),
        ("mqtt://x", {"ca_file": Path("ca.pem")}, "use mqtts://"),
    ],
)
def test_endpoint_mistakes_are_explained(url: str, files: dict[str, Path], message: str) -> None:
    with pytest.raises(AgentError, match=message):
        Endpoint.parse(url, **files)


def test_a_link_sends_what_other_threads_publish_and_its_hello(broker: Mosquitto) -> None:
    seen = subscriber(broker.port, "centre/#", client_id="watcher")
    changes: list[bool] = []
    link = Link(
        "test",
        Endpoint.parse(broker.url),
        "link-test",
        ["schools/+/alarm"],
        lambda _t, _p: None,
        on_change=lambda up, _why: changes.append(up),
        hello=lambda: Message("centre/hello", b"hi", True),
    )
    try:
        link.publish("centre/early", b"queued before the connection")  # kept until subscribed
        link.start()
        wait_for(link.subscribed.is_set, 10, "subscribed")
        threads = [
            threading.Thread(target=link.publish, args=("centre/n", b"%d" % i)) for i in range(20)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        topics = [m.topic for m in seen.wait("#", 22, timeout=10)]
        assert topics[:2] == ["centre/hello", "centre/early"] and topics.count("centre/n") == 20
        broker.kill()
        wait_for(lambda: changes == [True, False], 10, "the loss reported")
    finally:
        link.stop()
        seen.close()
