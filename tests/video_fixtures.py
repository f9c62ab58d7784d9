"""Fixtures and helpers for the video tests (cameras, segmenter, store, clips).

Imported by tests/conftest.py; the test modules also import the fixtures they use, so each file
runs on its own. Fixture functions carry a ``_fixture`` suffix and register under the plain name.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import av.logging
import numpy as np
import pytest

from agent.config.model import CameraConfig, LiveConfig
from agent.video.segmenter import Segment, Segmenter
from agent.video.sources.synthetic import SyntheticSource
from tests.rtsp_server import RtspServer, gst_available

# The simulated school's cameras (agent/data/simulated-school.yaml), for a test that changes
# each of them (agent/testing/site.py's school_config takes them by id).
CAMERAS = ("entrance-cam", "gym-cam", "office-cam", "corridor-cam")


def make_mpeg4_file(path: Path) -> Path:
    """Half a second of MPEG-4 Part 2: what a camera left on its default codec sends (the
    agent takes H.264 only)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for n in range(5):
            frame = av.VideoFrame(64, 64, "yuv420p")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_h264_file(
    path: Path,
    *,
    seconds: float = 10,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    gop: int = 25,
    b_frames: int = 0,
) -> Path:
    """A real H.264 file made with PyAV's libx264: a moving gradient, a keyframe every ``gop``.

    The container follows the suffix: .mp4 stores AVCC (the source must convert it to Annex-B),
    .ts stores Annex-B.
    """
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = b_frames
        stream.codec_context.options = {
            "preset": "ultrafast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={b_frames}",
        }
        ramp = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
        for n in range(round(seconds * fps)):
            luma = ramp + np.uint8(n * 5 % 256)
            chroma = np.full((height // 2, width), 128, np.uint8)
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def synthetic_segments(camera_id: str, n: int, *, bitrate_kbps: int = 1000) -> list[Segment]:
    """``n`` consecutive 1 s segments of a synthetic camera through the real segmenter, hash
    chain included (the first one's ``prev`` is the chain's start), made faster than real time."""
    out: list[Segment] = []
    source = SyntheticSource(
        width=160, height=96, fps=10, segment_s=1.0, bitrate_kbps=bitrate_kbps, realtime=False
    )
    seg = Segmenter(camera_id, 1.0, source.open(stall_s=5), [out.append])
    for packet in source.packets():
        seg.packet(packet)
        if len(out) >= n:
            break
    source.close()
    return out[:n]


@pytest.fixture(name="h264_file", scope="session")
def h264_file_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s, 320x240, 25 fps, a keyframe every second, in MP4 (AVCC)."""
    return make_h264_file(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(name="rtsp_server")
def rtsp_server_fixture() -> Iterator[RtspServer]:
    """A live RTSP camera (gst-rtsp-server in a child process) on a free loopback port."""
    reason = gst_available()
    if reason:
        pytest.skip(reason)
    server = RtspServer()
    server.start()
    yield server
    server.kill()


def camera_config(source: str = "synthetic:", **overrides: Any) -> CameraConfig:
    """A CameraConfig with the documented defaults, for code that takes one."""
    values: dict[str, Any] = {
        "id": "cam1",
        "source": source,
        "segment_s": 2.0,
        "pre_alarm_s": 30.0,
        "post_alarm_s": 30.0,
        "width": 640,
        "height": 360,
        "fps": 15,
        "bitrate_kbps": 1000,
        "live": LiveConfig(),
    }
    values.update(overrides)
    return CameraConfig(**values)


def decode(data: bytes) -> tuple[int, bool, list[str]]:
    """Decodes an MPEG-TS on its own: (frames, first frame is a keyframe, FFmpeg's errors)."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    frames: list[av.VideoFrame] = []
    try:
        with av.logging.Capture() as logs, av.open(io.BytesIO(data), "r", format="mpegts") as c:
            stream = c.streams.video[0]
            for packet in c.demux(stream):
                with contextlib.suppress(av.error.InvalidDataError):  # FFmpeg logs it: below
                    frames.extend(stream.decode(packet))
    finally:
        av.logging.set_level(previous)
    errors = [f"{name}: {message.strip()}" for _, name, message in logs]
    return len(frames), bool(frames) and frames[0].key_frame, errors


def duration(path: Path) -> float:
    """The file's duration in seconds, as ffprobe reads it (its format's)."""
    return float(ffprobe(path)["format"]["duration"])


def ffprobe(path: Path) -> dict[str, Any]:
    """ffprobe's view of a file: format duration and the video packets (pts, keyframe flag)."""
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-of", "json", "-select_streams", "v:0",
            "-show_entries", "format=duration:packet=pts_time,flags", str(path),
        ],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result
