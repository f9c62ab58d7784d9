"""Camera sources and the per-camera supervisor, against real video: libx264 output, an MP4 on
disk, and a live RTSP server that is killed, restarted and frozen."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from agent.errors import CameraError
from agent.video.camera import Camera
from agent.video.segmenter import Segment, Segmenter
from agent.video.sources import open_source
from agent.video.sources.base import CameraUnavailable, Packet, Source, StreamInfo
from agent.video.sources.demux import DemuxSource, rtsp_source
from agent.video.sources.h264 import ParameterSets
from agent.video.sources.picamera2 import Picamera2Source
from agent.video.sources.synthetic import SyntheticSource
from agent.video.sources.v4l2 import V4l2Source
from tests.conftest import wait_for
from tests.rtsp_server import RtspServer
from tests.video_fixtures import (
    camera_config,
    decode,
    h264_file_fixture,  # noqa: F401  (fixture)
    make_h264_file,
    make_mpeg4_file,
    rtsp_server_fixture,  # noqa: F401  (fixture)
)


class Collect:
    """A packet sink that keeps what it gets, as the segmenter would receive it."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []
        self.lock = threading.Lock()

    def packet(self, pkt: Packet) -> None:
        with self.lock:
            self.packets.append(pkt)

    def count(self) -> int:
        with self.lock:
            return len(self.packets)


def take(source: Source, n: int, stall_s: float = 5.0) -> list[Packet]:
    source.open(stall_s)
    try:
        out: list[Packet] = []
        for pkt in source.packets():
            out.append(pkt)
            if len(out) == n:
                return out
        return out
    finally:
        source.close()


def has_sps(data: bytes) -> bool:
    """An SPS (NAL type 7) and a PPS (8) come before the first slice of the access unit."""
    types, pos = [], data.find(b"\x00\x00\x01")
    while pos >= 0 and pos + 3 < len(data) and (kind := data[pos + 3] & 0x1F) not in range(1, 6):
        types.append(kind)
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return 7 in types and 8 in types


# --- sources ------------------------------------------------------------------------------------


def test_synthetic_has_a_keyframe_with_parameter_sets_every_segment() -> None:
    packets = take(SyntheticSource(width=160, height=96, fps=10, segment_s=1, realtime=False), 35)
    keys = [i for i, p in enumerate(packets) if p.keyframe]
    assert keys == [0, 10, 20, 30]
    assert all(has_sps(packets[i].data) for i in keys)
    assert [round(p.pts, 3) for p in packets[:3]] == [0.0, 0.1, 0.2]
    steps = {round(b.wallclock - a.wallclock, 3) for a, b in itertools.pairwise(packets)}
    assert steps == {0.1}  # simulated time: unpaced, yet stamped as if real


def test_synthetic_is_paced_in_real_time_by_default() -> None:
    started = time.monotonic()
    packets = take(SyntheticSource(width=160, height=96, fps=20, segment_s=1), 11)
    elapsed = time.monotonic() - started
    assert 0.45 < elapsed < 1.5
    assert abs((packets[-1].wallclock - packets[0].wallclock) - 0.5) < 0.1


def test_mp4_file_becomes_annexb_with_parameter_sets_and_loops(h264_file: Path) -> None:
    source = DemuxSource(str(h264_file), pace="simulated", loop=True)
    packets = take(source, 260)  # 10 s at 25 fps, then into the second pass
    assert all(p.data.startswith(b"\x00\x00\x00\x01") or p.data[:3] == b"\0\0\1" for p in packets)
    keys = [p for p in packets if p.keyframe]
    assert len(keys) == 11 and all(has_sps(p.data) for p in keys)
    pts = [p.pts for p in packets]
    assert all(b > a for a, b in itertools.pairwise(pts)), "time must not run back"
    assert abs(pts[250] - 10.0) < 1e-6  # the loop continues one frame after the last


def test_file_source_is_paced_by_pts(tmp_path: Path) -> None:
    path = make_h264_file(tmp_path / "short.ts", seconds=1, fps=20, gop=20)
    started = time.monotonic()
    take(DemuxSource(str(path), pace="realtime"), 11)
    assert 0.45 < time.monotonic() - started < 1.5


def split_nals(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit, each without its start code."""
    return [n.strip(b"\x00") for n in data.split(b"\x00\x00\x01") if n.strip(b"\x00")]


def test_parameter_sets_from_extradata_make_each_keyframe_decodable(tmp_path: Path) -> None:
    """Cameras that send SPS/PPS only in the RTSP SDP: the source must put them in-band."""
    packets = take(DemuxSource(str(make_h264_file(tmp_path / "a.ts", seconds=2))), 50)
    nals = split_nals(packets[0].data)
    sps_pps = b"".join(b"\x00\x00\x00\x01" + n for n in nals if n[0] & 0x1F in (7, 8))
    stripped = [
        b"".join(b"\x00\x00\x00\x01" + n for n in split_nals(p.data) if n[0] & 0x1F not in (7, 8))
        for p in packets
    ]
    assert packets[25].keyframe and not has_sps(stripped[25])

    params = ParameterSets(extradata=sps_pps)
    fixed = [params.ensure(d, p.keyframe) for d, p in zip(stripped, packets, strict=True)]
    assert has_sps(fixed[25]) and not has_sps(fixed[26])
    ctx = av.CodecContext.create("h264", "r")
    frames = [f for d in fixed[25:] for f in ctx.decode(av.Packet(d))]  # from the 2nd GOP alone
    frames += ctx.decode(None)
    assert len(frames) == 25 and frames[0].key_frame


def test_non_h264_stream_is_reported_as_unavailable(tmp_path: Path) -> None:
    path = make_mpeg4_file(tmp_path / "mpeg4.mp4")
    with pytest.raises(CameraUnavailable, match=r"H\.264"):
        DemuxSource(str(path)).open(5.0)


def test_open_source_picks_by_scheme_without_touching_anything() -> None:
    cases = {
        "synthetic:": SyntheticSource,
        "file:///nowhere/clip.mp4": DemuxSource,
        "rtsp://user:pw@192.0.2.1/stream": DemuxSource,
        "v4l2:///dev/video9": V4l2Source,
        "picamera2:0": Picamera2Source,
    }
    for src, kind in cases.items():
        assert isinstance(open_source(camera_config(src)), kind)
    assert open_source(camera_config("rtsp://user:pw@192.0.2.1/s")).name == (
        "rtsp://user:***@192.0.2.1/s"
    )
    with pytest.raises(CameraUnavailable, match="unsupported source"):
        open_source(camera_config("http://user:pw@192.0.2.1/"))


def test_picamera2_source_without_the_library_says_how_to_install_it() -> None:
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed: this machine can run the real camera")
    camera = Camera("pi", Picamera2Source(0, width=64, height=64, fps=10, gop=10, bitrate_kbps=100),
                    Collect())  # fmt: skip
    camera.start()
    wait_for(lambda: camera.state == "failed", 5, "state failed")
    camera.stop()
    assert camera.state == "failed"


@pytest.mark.skipif(not list(Path("/dev").glob("video*")), reason="no V4L2 device on this machine")
def test_v4l2_camera_streams() -> None:
    device = sorted(Path("/dev").glob("video*"))[0]
    source = V4l2Source(str(device), width=640, height=480, fps=15, gop=30, bitrate_kbps=1000)
    packets = take(source, 40)
    assert any(p.keyframe for p in packets)


# --- the supervisor -----------------------------------------------------------------------------


def test_camera_thread_is_named_and_stops_within_two_seconds() -> None:
    sink = Collect()
    camera = Camera("front", SyntheticSource(width=160, height=96, fps=15), sink)
    camera.start()
    wait_for(lambda: sink.count() > 3, 5, "packets")
    assert "camera-front" in [t.name for t in threading.enumerate()]
    assert camera.status().state == "streaming" and camera.last_packet_at is not None
    started = time.monotonic()
    camera.stop()
    assert time.monotonic() - started < 2.0
    assert camera.status().state == "stopped"
    assert "camera-front" not in [t.name for t in threading.enumerate()]


def test_one_failing_camera_does_not_affect_another(tmp_path: Path) -> None:
    good_sink = Collect()
    good = Camera("good", SyntheticSource(width=160, height=96, fps=15), good_sink)
    bad = Camera("bad", DemuxSource(str(tmp_path / "missing.mp4")), Collect())
    good.start()
    bad.start()
    try:
        wait_for(lambda: bad.state == "reconnecting", 5, "bad camera reconnecting")
        before = good_sink.count()
        time.sleep(0.5)
        assert good_sink.count() > before and good.state == "streaming"
    finally:
        bad.stop()
        good.stop()


def test_a_sink_that_raises_does_not_stop_the_camera(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Packet] = []

    def broken(pkt: Packet) -> None:
        calls.append(pkt)
        raise RuntimeError("sink bug")

    camera = Camera("c", SyntheticSource(width=160, height=96, fps=30), broken)
    camera.start()
    wait_for(lambda: len(calls) >= 5, 5, "several packets despite errors")
    camera.stop()
    assert "sink failed" in caplog.text


def test_corrupt_bytes_in_a_file_are_skipped_without_a_crash(tmp_path: Path) -> None:
    path = make_h264_file(tmp_path / "corrupt.ts", seconds=6, fps=25, gop=25)
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 40_000, 997):
        data[offset : offset + 50] = bytes(range(50))  # garbage in the middle third
    path.write_bytes(bytes(data))
    segments: list[Segment] = []
    info = StreamInfo(320, 240, Fraction(25))
    segmenter = Segmenter("c", 1.0, info, [segments.append])
    camera = Camera("c", DemuxSource(str(path), pace="simulated", loop=True), segmenter)
    camera.start()
    try:
        wait_for(lambda: len(segments) >= 14, 10, "segments past the corruption, twice")
    finally:
        camera.stop()
    assert camera.state == "stopped" and camera.reconnects == 0
    assert [s.index for s in segments] == list(range(len(segments)))
    results = [decode(s.data) for s in segments]
    clean = [frames for frames, first_key, errors in results if first_key and not errors]
    assert len(clean) >= len(segments) // 2  # the garbage stays inside the GOPs it hit


def test_garbage_file_keeps_the_camera_reconnecting(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(bytes(range(256)) * 400)
    camera = Camera("g", DemuxSource(str(path)), Collect())
    camera.start()
    wait_for(lambda: camera.state == "reconnecting", 5, "reconnecting")
    started = time.monotonic()
    camera.stop()
    assert time.monotonic() - started < 2.0 and camera.state == "stopped"


# --- RTSP ---------------------------------------------------------------------------------------


def test_rtsp_ingest_gives_decodable_segments(rtsp_server: RtspServer) -> None:
    segments: list[Segment] = []
    segmenter = Segmenter("door", 1.0, StreamInfo(320, 240, Fraction(25)), [segments.append])
    camera = Camera("door", rtsp_source(rtsp_server.url), segmenter, stall_s=3)
    camera.start()
    try:
        wait_for(lambda: len(segments) >= 2, 15, "two segments from RTSP")
    finally:
        camera.stop()
    for segment in segments:
        frames, first_key, errors = decode(segment.data)
        assert first_key and not errors and 20 <= frames <= 30
        assert abs(segment.duration - 1.0) < 0.1


def test_rtsp_server_killed_and_restarted_reconnects_and_records_the_gap(
    rtsp_server: RtspServer,
) -> None:
    sink = Collect()
    camera = Camera("door", rtsp_source(rtsp_server.url), sink, stall_s=3)
    camera.start()
    try:
        wait_for(lambda: camera.state == "streaming", 10, "streaming")
        killed_at = time.time()
        rtsp_server.kill()
        wait_for(lambda: camera.state == "reconnecting", 5, "loss noticed")
        rtsp_server.start()
        wait_for(lambda: camera.reconnects == 1, 15, "reconnected")
        assert camera.state == "streaming"
        [(gap_start, gap_end)] = camera.gaps
        assert gap_start <= killed_at + 0.5 and gap_end > killed_at
        count = sink.count()
        wait_for(lambda: sink.count() > count + 10, 5, "packets after reconnect")
    finally:
        camera.stop()
    pts = [p.pts for p in sink.packets]
    assert all(b > a for a, b in itertools.pairwise(pts))


def test_rtsp_stall_is_detected_and_recovered(rtsp_server: RtspServer) -> None:
    sink = Collect()
    camera = Camera("door", rtsp_source(rtsp_server.url, io_timeout_s=1), sink, stall_s=1)
    camera.start()
    try:
        wait_for(lambda: camera.state == "streaming", 10, "streaming")
        rtsp_server.pause()
        wait_for(lambda: camera.state == "reconnecting", 5, "stall noticed")
        rtsp_server.resume()
        wait_for(lambda: camera.reconnects >= 1, 15, "recovered")
    finally:
        rtsp_server.resume()
        camera.stop()


def test_rtsp_password_never_appears_in_logs_or_errors(
    rtsp_server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = rtsp_server.url.replace("rtsp://", "rtsp://admin:hunter2-s3cret@")
    dead = f"rtsp://admin:hunter2-s3cret@127.0.0.1:{rtsp_server.port}/nothing-here"
    sink = Collect()
    for url in (good, dead):
        camera = Camera("door", rtsp_source(url), sink, stall_s=3)
        camera.start()
        wait_for(lambda: camera.state in ("streaming", "reconnecting"), 10, "a state")  # noqa: B023
        camera.stop()
    with pytest.raises(CameraError) as info:
        rtsp_source(dead).open(3.0)
    assert sink.count() > 0
    assert "hunter2" not in caplog.text and "hunter2" not in str(info.value)
    assert "admin:***@" in caplog.text
