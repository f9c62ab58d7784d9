"""The uplink against a real broker: priorities, the video cap, acks, reconnects."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config.model import MqttConfig
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Priority, Topics
from agent.delivery.uplink.link import Uplink
from agent.delivery.uplink.pacing import Pacer, TokenBucket, notsent_lowat
from agent.testing.broker import Mosquitto
from agent.testing.mqtt import MqttClient
from tests.conftest import subscriber, wait_for
from tests.fault.mqtt_proxy import Cut, CutMode, Direction, MqttProxy

TOPICS = Topics("schools", "site-a")


def _mqtt(port: int) -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1",
        port=port,
        topic_prefix="schools",
        keepalive_s=5,
        client_id="uplink-test",
        tls=None,
        username=None,
        password_file=None,
        allow_plaintext=False,
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(tmp_path / "outbox.db")
    yield box
    box.close()


def _uplink(broker: Mosquitto, box: Outbox, **kw: object) -> Uplink:
    up = Uplink(_mqtt(broker.port), TOPICS, box, lambda state, _r: state.encode(), **kw)  # type: ignore[arg-type]
    up.start()
    return up


def _topics(col: MqttClient) -> list[str]:
    return [m.topic for m in col.received()]


def _clips(box: Outbox, n: int, size: int) -> None:
    for i in range(n):
        box.add(Priority.CLIP, "schools/site-a/clip/cam", f"clip-{i}", b"%06d" % i + b"x" * size)


def test_alarm_overtakes_a_queued_clip_backlog(broker: Mosquitto, outbox: Outbox) -> None:
    col = subscriber(broker.port, "schools/site-a/#", client_id="prio")
    _clips(outbox, 300, 16_000)
    up = _uplink(broker, outbox, pacer=Pacer(4000, auto=False))  # slow: the backlog takes s
    try:
        wait_for(
            lambda: sum(t.endswith("/clip/cam") for t in _topics(col)) >= 5,
            10,
            "the backlog to start draining",
        )
        received_at_press = sum(t.endswith("/clip/cam") for t in _topics(col))
        outbox.add_alarm(TOPICS.alarm, "the-alarm", lambda seq: b'{"alarm":%d}' % seq)
        up.wake()
        wait_for(lambda: any(t.endswith("/alarm") for t in _topics(col)), 5, "the alarm")
        topics = [t for t in _topics(col) if not t.endswith("/status")]
        clips_before = topics.index(TOPICS.alarm)
        # Only what was already handed to paho or the kernel may precede it: the in-flight
        # window (8) at most, never the 250-odd chunks still queued.
        assert clips_before <= received_at_press + 8, (clips_before, received_at_press)
    finally:
        up.stop()
        col.close()


def test_video_cap_holds_and_everything_arrives_in_order(broker: Mosquitto, outbox: Outbox) -> None:
    col = subscriber(broker.port, "schools/site-a/clip/#", client_id="cap")
    _clips(outbox, 40, 10_000)  # 400 KB
    t0 = time.monotonic()
    up = _uplink(broker, outbox, pacer=Pacer(800, auto=False))  # 100 KB/s
    try:
        wait_for(lambda: col.count() >= 40, 15, "every clip chunk")
        elapsed = time.monotonic() - t0
        assert elapsed >= (400_000 - 100_000) / 100_000 * 0.9
        assert [m.payload[:6] for m in col.received()] == [b"%06d" % i for i in range(40)]
        wait_for(lambda: outbox.depth()["clip"] == 0, 3, "acked chunks deleted")
    finally:
        up.stop()
        col.close()


def test_unacked_messages_are_resent_after_the_broker_dies(
    broker: Mosquitto, outbox: Outbox
) -> None:
    col = subscriber(broker.port, "schools/site-a/clip/#", client_id="resend")
    _clips(outbox, 60, 20_000)
    up = _uplink(broker, outbox, pacer=Pacer(2000, auto=False))
    try:
        wait_for(lambda: col.count() >= 10, 10, "some chunks")
        broker.kill()
        broker.start()
        wait_for(lambda: len({m.payload[:6] for m in col.received()}) == 60, 20, "all 60 chunks")
        wait_for(lambda: outbox.depth()["clip"] == 0, 5, "outbox drained")
    finally:
        up.stop()
        col.close()


def test_a_retained_value_lost_with_its_connection_is_sent_again(
    broker: Mosquitto, outbox: Outbox
) -> None:
    """The box posts its public key once, at start. Handed to a connection that then dies
    before the broker's PUBACK, it was gone for good, and no clip could verify at the centre
    (found by tests/fault/test_disconnect_points.py)."""
    col = subscriber(broker.port, TOPICS.pubkey, client_id="latest")
    # Everything after the CONNACK vanishes: the first turn online hands paho the key (and the
    # alarm, whose missing PUBACK ends the connection); the reconnect passes.
    proxy = MqttProxy(broker.port, Cut(Direction.B2A, 1, CutMode.BLACKHOLE)).start()
    outbox.add_alarm(TOPICS.alarm, "the-alarm", lambda seq: b'{"alarm":%d}' % seq)
    up = Uplink(
        _mqtt(proxy.port), TOPICS, outbox, lambda state, _r: state.encode(), alarm_ack_timeout_s=0.5
    )
    up.post_latest(TOPICS.pubkey, b"the box key")
    up.start()
    try:
        wait_for(lambda: len(proxy.links) >= 2, 10, "the reconnect")
        wait_for(col.count, 10, "the key at the broker")
        first = proxy.first()
        assert first is not None and "PUBLISH pubkey" not in first.packets[Direction.A2B]
    finally:
        up.stop()
        proxy.close()
        col.close()


def test_token_bucket() -> None:
    b = TokenBucket(80)  # 10,000 bytes/s, 0.1 s early at most
    assert b.wait_for(1000, 10.0) == 0  # due at 10.0; the next is due at 10.1
    assert b.wait_for(1000, 10.0) == 0  # 0.1 s early: allowed; the next is due at 10.2
    assert b.wait_for(1000, 10.0) == pytest.approx(0.1)  # 0.2 s early: wait until 10.1
    assert b.wait_for(5000, 10.1) == 0  # a message larger than a burst is fine; due 10.7
    assert b.wait_for(100, 10.1) == pytest.approx(0.5)
    assert b.wait_for(100, 10.64) == 0  # a late wake-up loses nothing: the schedule holds
    b2 = TokenBucket(80)
    sent, now = 0, 0.0
    while now < 10.0:  # a sender waking 7 ms late every time still gets the whole rate
        wait = b2.wait_for(16_000, now)
        if wait == 0:
            sent += 16_000
        now += wait + 0.007
    assert sent / 10.0 >= 10_000 * 0.97
    assert TokenBucket(None).wait_for(10**9, 0.0) == 0


def test_notsent_lowat_follows_the_video_cap() -> None:
    assert notsent_lowat(1000) == 4096  # 1 Mbit/s: an alarm waits ~32 ms, not ~128 ms
    assert notsent_lowat(10_000) == 37_500
    assert notsent_lowat(None) == 16 * 1024
