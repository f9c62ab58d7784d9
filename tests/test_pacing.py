"""The pacer without a network: TCP_INFO parsing, the path meter's arithmetic, the gate.

What it does on real links (tbf in a router namespace) is tests/fault/test_rate_change.py and
bench/uplink.py.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from agent.delivery.uplink import tcpinfo
from agent.delivery.uplink.pacing import (
    EARLY,
    MARGIN_S,
    MAX_CHUNK,
    MAX_WAIT_S,
    MIN_CHUNK,
    PACING_GAIN,
    RATE_KEEP,
    Pacer,
    PathMeter,
    describe,
)
from agent.delivery.uplink.tcpinfo import TcpInfo

MSS = 1448


def _raw(
    size: int = 232,
    *,
    mss: int = MSS,
    unacked: int = 3,
    acked: int = 10_000,
    notsent: int = 500,
    min_rtt_us: int = 40_000,
    sent: int = 20_000,
    retrans: int = 1_000,
) -> bytes:
    raw = bytearray(232)
    struct.pack_into("I", raw, 16, mss)
    struct.pack_into("I", raw, 24, unacked)
    struct.pack_into("Q", raw, 120, acked)
    struct.pack_into("II", raw, 144, notsent, min_rtt_us)
    struct.pack_into("QQ", raw, 200, sent, retrans)
    return bytes(raw[:size])


def test_tcp_info_fields_at_the_offsets_of_linux_tcp_h() -> None:
    info = tcpinfo.parse(_raw())
    assert info == TcpInfo(
        min_rtt_s=0.04, bytes_acked=10_000, bytes_sent=19_000, notsent_bytes=500, snd_mss=MSS
    )


def test_an_older_kernel_without_bytes_sent_counts_the_unacknowledged_segments() -> None:
    info = tcpinfo.parse(_raw(192))  # Linux 4.10 to 4.18: no tcpi_bytes_sent
    assert info is not None and info.bytes_sent == 10_000 + 3 * MSS


def test_a_kernel_without_min_rtt_gives_nothing_to_pace_by() -> None:
    assert tcpinfo.parse(_raw(104)) is None  # before Linux 4.6


def test_tcp_info_of_a_real_connection() -> None:
    if not hasattr(socket, "TCP_INFO"):
        pytest.skip("TCP_INFO is Linux only; elsewhere the pacer keeps the fixed cap")
    server = socket.create_server(("127.0.0.1", 0))
    got = bytearray()

    def drain() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                got.extend(data)

    reader = threading.Thread(target=drain)
    reader.start()
    with socket.create_connection(server.getsockname()) as client:
        client.sendall(b"x" * 200_000)
        info = tcpinfo.read(client)
        assert info is not None
        assert 0 < info.bytes_sent <= 200_000
        assert info.bytes_acked <= info.bytes_sent + 1  # the SYN counts as one acked byte
        assert info.snd_mss > 0
    reader.join(5)
    server.close()
    assert len(got) == 200_000


def _info(acked: int, in_flight: int = 0, notsent: int = 0, min_rtt_s: float = 0.0) -> TcpInfo:
    return TcpInfo(
        min_rtt_s=min_rtt_s,
        bytes_acked=acked,
        bytes_sent=acked + in_flight,
        notsent_bytes=notsent,
        snd_mss=MSS,
    )


def _drive(
    meter: PathMeter, t: float, acked: int, seconds: float, rate: float, in_flight: int = 0
) -> tuple[float, int]:
    """Video waits all along; the path delivers ``rate`` bytes/s, or what the kernel's
    pacing lets through if less. Returns (t, acked)."""
    end = t + seconds
    while t < end:
        t += 0.05
        acked += int(min(rate, meter.pacing_bps() or rate) * 0.05)
        meter.sample(t, _info(acked, in_flight))
    return t, acked


def test_the_upload_rate_is_what_the_path_delivered_while_video_waited() -> None:
    meter = PathMeter()
    assert meter.upload_bps is None and meter.pacing_bps() is None  # unpaced until measured
    _drive(meter, 0.0, 0, 1.2, 120_000)
    assert meter.upload_bps == pytest.approx(120_000, rel=0.02)
    assert meter.pacing_bps() == pytest.approx(PACING_GAIN * 120_000, rel=0.02)


def test_one_slow_window_is_not_a_slower_link_but_several_are() -> None:
    meter = PathMeter()
    t, acked = _drive(meter, 0.0, 0, 1.2 * RATE_KEEP, 500_000)
    t, acked = _drive(meter, t, acked, 1.05, 62_500)  # the link drops 8x
    assert meter.upload_bps == pytest.approx(500_000, rel=0.02)
    t, acked = _drive(meter, t, acked, 1.05 * RATE_KEEP, 62_500)
    assert meter.upload_bps == pytest.approx(62_500, rel=0.05)


def test_a_window_in_which_video_did_not_wait_all_along_is_not_a_rate() -> None:
    meter = PathMeter()
    t, acked = _drive(meter, 0.0, 0, 0.6, 100_000)
    t += 0.5  # no video waited: the cameras, not the path, set the pace meanwhile
    t, acked = _drive(meter, t, acked, 0.6, 100_000)
    assert meter.upload_bps is None
    meter.idle()  # the max_kbps bucket held video back: the same
    t, acked = _drive(meter, t, acked, 0.6, 100_000)
    assert meter.upload_bps is None


def test_video_waits_until_little_of_ours_is_ahead_of_it_on_the_path() -> None:
    meter = PathMeter()
    _drive(meter, 0.0, 0, 1.2, 100_000)  # 100 KB/s
    margin = MSS + MARGIN_S * meter.upload_bps  # type: ignore[operator]
    meter.sample(2.0, _info(200_000, in_flight=int(margin) - 100))
    assert meter.margin == pytest.approx(margin)
    assert meter.wait_s() == 0  # the pipe is about empty: the next message may go
    meter.sample(2.05, _info(200_000, in_flight=3_000, notsent=2_000))
    assert meter.ahead_bytes == 5_000
    # (as if the path drained faster than measured: a late look would leave the link idle)
    assert meter.wait_s() == pytest.approx((5_000 - margin) / (EARLY * 100_000), rel=0.02)
    meter.sample(2.1, _info(200_000, in_flight=30_000))
    assert meter.wait_s() == MAX_WAIT_S  # a long queue is looked at again soon anyway


def test_the_bytes_one_round_trip_keeps_on_the_wire_are_not_a_queue() -> None:
    meter = PathMeter()
    _drive(meter, 0.0, 0, 1.2, 100_000)
    meter.sample(2.0, _info(200_000, in_flight=5_000, min_rtt_s=0.05))  # 5 KB = 50 ms at rate
    assert meter.ahead_bytes == 0 and meter.wait_s() == 0


def test_the_kernel_stops_pacing_for_a_window_when_its_pacing_held_video_back() -> None:
    meter = PathMeter()
    t, acked = _drive(meter, 0.0, 0, 1.1, 100_000)  # unpaced: the link's 100 KB/s
    t, acked = _drive(meter, t, acked, 1.1, 100_000)  # paced at 125 KB/s: the link held it
    assert not meter.box_limited
    assert meter.pacing_bps() == pytest.approx(PACING_GAIN * 100_000, rel=0.02)
    # The link grew to 400 KB/s: the path delivers all the pacing lets through, 125 KB/s.
    t, acked = _drive(meter, t, acked, 1.1, 400_000)
    assert meter.box_limited and meter.upload_bps == pytest.approx(125_000, rel=0.05)
    assert meter.pacing_bps() is None  # a window unpaced: it shows the link's 400 KB/s
    _drive(meter, t, acked, 2.2, 400_000)
    assert not meter.box_limited and meter.upload_bps == pytest.approx(400_000, rel=0.05)
    assert meter.pacing_bps() == PACING_GAIN * meter.upload_bps


class _FakeKernel:
    """A socket's TCP_INFO as the pacer reads it; ``None`` as on a kernel without it."""

    def __init__(self, info: TcpInfo | None) -> None:
        self.info = info

    def __call__(self, _sock: socket.socket) -> TcpInfo | None:
        return self.info


def test_a_fixed_pacer_is_todays_pacer() -> None:
    kernel = _FakeKernel(_info(0))
    pacer = Pacer(900, auto=False, read=kernel)
    with socket.socket() as sock:
        pacer.attach(sock)
        assert not pacer.auto and pacer.path_wait(sock, 0.0) is None
    assert pacer.lowat == 4096 and pacer.bucket.rate_kbps == 900
    assert pacer.status()["mode"] == "fixed" and pacer.status()["upload_kbps"] is None


def test_without_tcp_info_the_pacer_keeps_the_fixed_cap() -> None:
    pacer = Pacer(None, auto=True, read=_FakeKernel(None))
    with socket.socket() as sock:
        pacer.attach(sock)
        assert not pacer.auto and pacer.path_wait(sock, 0.0) is None
    assert pacer.status()["mode"] == "fixed"


def test_the_status_shows_what_the_pacer_uses() -> None:
    kernel = _FakeKernel(_info(0, min_rtt_s=0.03))
    pacer = Pacer(2000, read=kernel)
    with socket.socket() as sock:
        pacer.attach(sock)
        assert pacer.auto
        t, acked = 0.0, 0
        while t < 1.2:
            t += 0.05
            acked += 6_000  # 120 KB/s
            kernel.info = _info(acked, in_flight=3_600, min_rtt_s=0.03)  # 30 ms on the wire
            pacer.path_wait(sock, t)
        assert pacer.path_wait(sock, t) == 0  # once the rate is known, not a queue
        pacer.wait_for(16_000, t)
    status = pacer.status()
    assert status == {
        "mode": "auto",
        "upload_kbps": 960,
        "ceiling_kbps": 2000,
        "base_rtt_ms": 30.0,
        "queue_delay_ms": 0.0,
        "alarm_wait_ms": status["alarm_wait_ms"],
        "notsent_lowat": pacer.lowat,
        "window": 8,
    }
    margin = MSS + MARGIN_S * 120_000
    assert status["alarm_wait_ms"] == pytest.approx(30 + (16_000 + margin) / 120, rel=0.01)


@pytest.mark.parametrize(
    ("upload_bps", "expected"),
    [
        (None, MAX_CHUNK),  # nothing measured: the largest a link that drops can take
        (62_500 * 0.955, 6 * 1024),  # 0.5 Mbit/s: about 100 ms
        (125_000 * 0.955, MAX_CHUNK),  # 1 Mbit/s: 12 KB would be 100 ms; the link may drop
        (500_000, MAX_CHUNK),  # 4 Mbit/s
        (12_500_000, 82 * 1024),  # 100 Mbit/s: at most 150 messages a second (the broker's limit)
        (100_000_000, 128 * 1024),  # 800 Mbit/s: never near the broker's max_packet_size
        (10_000, MIN_CHUNK),  # 80 kbit/s: never below 4 KB (each has a ~400-byte header)
    ],
)
def test_video_is_cut_smaller_on_a_slow_link(upload_bps: float | None, expected: int) -> None:
    pacer = Pacer()
    assert pacer.meter is not None
    pacer.meter.upload_bps = upload_bps
    assert pacer.chunk_bytes(16384) == expected


def _pacing(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "mode": "auto",
        "upload_kbps": 930,
        "ceiling_kbps": None,
        "base_rtt_ms": 31.0,
        "queue_delay_ms": 2.5,
        "alarm_wait_ms": 120.0,
        "notsent_lowat": 4096,
        "window": 8,
    }
    return {**base, **kw}


@pytest.mark.parametrize(
    ("pacing", "ok", "words"),
    [
        (
            _pacing(),
            True,
            "upload about 0.9 Mbit/s; alarms will reach the centre in about 0.1 s "
            "while video uploads (base RTT 31.0 ms, queue 2.5 ms)",
        ),
        (
            _pacing(upload_kbps=8000, alarm_wait_ms=45.0),
            True,
            "alarms will reach the centre in under 0.1 s",
        ),
        (_pacing(upload_kbps=None, alarm_wait_ms=None), True, "not measured yet"),
        (_pacing(alarm_wait_ms=2400.0), False, "about 2.4 s"),
        (_pacing(mode="fixed", ceiling_kbps=900), True, "video capped at 900 kbit/s"),
        (_pacing(mode="fixed"), False, "not paced"),
    ],
)
def test_selftest_says_what_the_running_agent_measured(
    pacing: dict[str, object], ok: bool, words: str
) -> None:
    from agent.box.selftest.centre import upload as _upload

    check = _upload({"uplink": {"pacing": pacing}})
    assert check.name == "upload" and check.ok is ok and words in check.detail
    assert ok or check.fix


def test_status_while_the_path_delivers_nothing() -> None:
    """A black-holed link delivers nothing while video waits: the estimate falls to 0, and the
    status (status --json, health, selftest) must still answer. It divided by zero, the
    control socket's thread died, and `edge-agent status` got no answer while the link was
    dead, which is when a technician asks (tests/fault/test_link_cut.py found it)."""
    kernel = _FakeKernel(_info(0, min_rtt_s=0.03))
    pacer = Pacer(read=kernel)
    with socket.socket() as sock:
        pacer.attach(sock)
        t, acked = 0.0, 0
        while t < 1.2:  # a working link first
            t += 0.05
            acked += 6_000
            kernel.info = _info(acked, in_flight=3_600, min_rtt_s=0.03)
            pacer.path_wait(sock, t)
        pacer.wait_for(16_000, t)
        while t < 6.0:  # then nothing is acknowledged any more, and video waits all along
            t += 0.05
            kernel.info = _info(acked, in_flight=60_000, min_rtt_s=0.03)
            pacer.path_wait(sock, t)
    status = pacer.status()
    assert status["mode"] == "auto" and status["upload_kbps"] == 0
    assert status["alarm_wait_ms"] is None and status["queue_delay_ms"] is None
    assert "link down" in describe(status)
