"""Segmenter and ring buffer against real H.264 (libx264 output and an MP4 with B-frames)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import threading
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import pytest

from agent.video.ring import RingBuffer
from agent.video.segmenter import Segment, Segmenter
from agent.video.sources.base import Packet, Source, StreamInfo
from agent.video.sources.demux import DemuxSource
from agent.video.sources.synthetic import SyntheticSource
from tests.video_fixtures import (
    decode,
    ffprobe,
    h264_file_fixture,  # noqa: F401  (fixture)
    make_h264_file,
)

INFO = StreamInfo(320, 240, Fraction(15))  # as synthetic() makes


def segments_of(source: Source, seconds: float, segment_s: float = 2.0) -> list[Segment]:
    info = source.open(5.0)
    out: list[Segment] = []
    segmenter = Segmenter("cam", segment_s, info, [out.append])
    try:
        for pkt in source.packets():
            if pkt.pts >= seconds:
                break
            segmenter.packet(pkt)
    finally:
        source.close()
    segmenter.flush()
    return out


def synthetic(fps: int = 15, segment_s: float = 2.0) -> SyntheticSource:
    return SyntheticSource(width=320, height=240, fps=fps, segment_s=segment_s, realtime=False)


def first_packets(n: int) -> list[Packet]:
    """The synthetic source's first ``n`` packets (15 fps, a keyframe every 2 s)."""
    source = synthetic()
    source.open(5.0)
    packets = [p for _, p in zip(range(n), source.packets(), strict=False)]
    source.close()
    return packets


def segmented(packets: Iterable[Packet]) -> list[Segment]:
    """``packets`` through a Segmenter of 2 s segments, flushed at the end."""
    out: list[Segment] = []
    segmenter = Segmenter("cam", 2.0, INFO, [out.append])
    for pkt in packets:
        segmenter.packet(pkt)
    segmenter.flush()
    return out


def test_synthetic_segments_are_keyframe_aligned_and_decode_alone() -> None:
    segments = segments_of(synthetic(), 10.0)
    assert [s.index for s in segments] == [0, 1, 2, 3, 4]
    for segment in segments:
        assert segment.duration == pytest.approx(2.0)
        assert segment.keyframes == 1
        assert segment.end == pytest.approx(segment.start + segment.duration)
        assert segment.sha256 == hashlib.sha256(segment.data).hexdigest()
        frames, first_key, errors = decode(segment.data)
        assert (frames, first_key, errors) == (30, True, [])
    starts = [s.start for s in segments]
    assert all(b - a == pytest.approx(2.0, abs=1e-3) for a, b in itertools.pairwise(starts))


def test_cuts_only_at_keyframes_when_the_gop_is_not_the_segment_length() -> None:
    # keyframes every 1.5 s, segments of 2 s: each segment is two GOPs, 3 s, never cut mid-GOP
    segments = segments_of(synthetic(fps=10, segment_s=1.5), 9.0, segment_s=2.0)
    assert [round(s.duration, 3) for s in segments] == [3.0, 3.0, 3.0]
    assert all(s.keyframes == 2 and decode(s.data)[1] for s in segments)


def test_packets_before_the_first_keyframe_are_dropped() -> None:
    packets = first_packets(40)
    out = segmented(packets[5:])  # start mid-GOP, as after joining a live stream
    assert out[0].start == packets[30].wallclock and decode(out[0].data)[1]


def test_concatenated_segments_play_as_one_file(tmp_path: Path, h264_file: Path) -> None:
    """Consecutive segments cat'ed together: ffprobe sees the summed duration, no errors."""
    sources: dict[str, Source] = {
        "synthetic": synthetic(),
        "mp4 with B-frames": DemuxSource(
            str(make_h264_file(tmp_path / "b.mp4", b_frames=2)), pace="simulated"
        ),
        "mp4": DemuxSource(str(h264_file), pace="simulated"),
    }
    for name, source in sources.items():
        segments = segments_of(source, 10.0)
        joined = tmp_path / f"{name}.ts"
        joined.write_bytes(b"".join(s.data for s in segments))
        probe = ffprobe(joined)
        total = sum(s.duration for s in segments)
        assert float(probe["format"]["duration"]) == pytest.approx(total, abs=0.05), name
        _, first_key, errors = decode(joined.read_bytes())
        assert first_key and not errors, (name, errors)


def test_a_gap_in_time_closes_the_segment_and_time_continues() -> None:
    packets = first_packets(75)
    before = packets[:45]  # 3 s: one segment and half of the next
    after = [  # then 1 s missing (a reconnect), resuming at a keyframe
        dataclasses.replace(p, pts=p.pts + 5.0, wallclock=p.wallclock + 5) for p in packets[60:]
    ]
    out = segmented(before + after)
    assert [round(s.duration, 3) for s in out] == [2.0, 1.0, 1.0]
    assert out[2].start - out[1].end == pytest.approx(6.0, abs=0.1)


def test_flush_closes_the_open_segment() -> None:
    out: list[Segment] = []
    segmenter = Segmenter("cam", 2.0, INFO, [out.append])
    source = synthetic()
    source.open(5.0)
    for _, pkt in zip(range(20), source.packets(), strict=False):
        segmenter.packet(pkt)
    source.close()
    assert out == []
    segmenter.flush()
    assert len(out) == 1 and out[0].duration == pytest.approx(20 / 15)
    segmenter.flush()
    assert len(out) == 1


def test_a_failing_sink_does_not_stop_the_others() -> None:
    got: list[Segment] = []

    def broken(_: Segment) -> None:
        raise RuntimeError("sink bug")

    segmenter = Segmenter("cam", 2.0, INFO, [broken, got.append])
    for pkt in fake_packets(5.0):
        segmenter.packet(pkt)
    assert len(got) == 2


# --- ring buffer ---------------------------------------------------------------------------------


def fake_packets(seconds: float, fps: int = 10, t0: float = 1000.0) -> list[Packet]:
    """Not decodable: for ring and clip logic only (the muxer copies bytes as they are)."""
    return [
        Packet(b"\x00\x00\x00\x01\x65" + bytes(200), n / fps, n % fps == 0, t0 + n / fps)
        for n in range(round(seconds * fps))
    ]


def segment(index: int, start: float, duration: float = 2.0, size: int = 1000) -> Segment:
    data = index.to_bytes(4, "big") * (size // 4)
    digest = hashlib.sha256(data).hexdigest()
    return Segment("cam", index, start, start + duration, duration, data, digest, 1)


def test_ring_keeps_whole_segments_covering_keep_s() -> None:
    ring = RingBuffer(keep_s=5.0)
    for i in range(10):
        ring.add(segment(i, 100.0 + 2 * i))
    kept = ring.segments()
    assert [s.index for s in kept] == [7, 8, 9]  # 6 s; without #7 only 4 s would be left
    assert kept[-1].end - kept[0].start >= 5.0
    assert kept[-1].end - kept[1].start < 5.0


def test_ring_between_returns_overlapping_segments() -> None:
    ring = RingBuffer(keep_s=30.0)
    for i in range(10):
        ring.add(segment(i, 100.0 + 2 * i))
    assert [s.index for s in ring.between(103.0, 107.0)] == [1, 2, 3]
    assert [s.index for s in ring.between(104.0, 104.0 + 1e-9)] == [2]
    assert ring.between(200.0, 300.0) == []


def test_ring_is_bounded_by_memory_too(caplog: pytest.LogCaptureFixture) -> None:
    ring = RingBuffer(keep_s=30.0, max_bytes=5000)
    for i in range(10):
        ring.add(segment(i, 100.0 + 2 * i, size=1000))
    assert ring.nbytes <= 5000 and len(ring.segments()) == 5
    assert caplog.text.count("pre-alarm buffer capped") == 1


def test_ring_listeners_hear_new_segments_and_backlog_without_gaps_or_repeats() -> None:
    ring = RingBuffer(keep_s=30.0)
    for i in range(5):
        ring.add(segment(i, 100.0 + 2 * i))
    heard: list[int] = []

    def listener(s: Segment) -> None:
        heard.append(s.index)

    ring.add_listener(listener, backlog_from=105.0)
    ring.add(segment(5, 110.0))
    ring.remove_listener(listener)
    ring.add(segment(6, 112.0))
    assert heard == [2, 3, 4, 5]


def test_ring_is_safe_across_threads() -> None:
    ring = RingBuffer(keep_s=10.0)
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            window = ring.between(0, 1e9)
            seen.append(len(window))
            indexes = [s.index for s in window]
            assert indexes == sorted(indexes)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(2000):
        ring.add(segment(i, 2.0 * i, size=64))
    stop.set()
    for t in threads:
        t.join()
    assert seen and max(seen) <= 7


def test_data_the_muxer_rejects_loses_that_segment_only(caplog: pytest.LogCaptureFixture) -> None:
    out: list[Segment] = []
    segmenter = Segmenter("cam", 1.0, StreamInfo(64, 64, Fraction(10)), [out.append])
    for n, pkt in enumerate(fake_packets(4.0)):
        if 10 <= n < 20:  # the second second: no start code at all
            pkt = dataclasses.replace(pkt, data=b"garbage without a start code")
        segmenter.packet(pkt)
    segmenter.flush()
    assert [s.index for s in out] == [0, 1, 2] and "segment dropped" in caplog.text
    assert [round(s.start - out[0].start) for s in out] == [0, 2, 3]
