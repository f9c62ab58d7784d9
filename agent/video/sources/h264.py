"""H.264 helpers shared by the sources: Annex-B access units, parameter sets, an encoder for
sources that deliver raw frames, and pacing against the wall clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, Literal, NamedTuple

import av
import av.error

from agent.video.sources.base import CameraUnavailable, Packet

log = logging.getLogger("agent.cameras")


# --- H.264 bitstream helpers ------------------------------------------------------------------

_START = b"\x00\x00\x01"
_SPS, _PPS = 7, 8
_VCL = range(1, 6)


def _leading_nals(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, NAL) for the NAL units before the first slice; slices are not copied."""
    pos = data.find(_START)
    while pos >= 0 and pos + 3 < len(data):
        begin = pos + 3
        nal_type = data[begin] & 0x1F
        if nal_type in _VCL:
            return
        pos = data.find(_START, begin)
        end = len(data) if pos < 0 else pos
        yield nal_type, data[begin:end].rstrip(b"\x00")


class ParameterSets:
    """Puts the latest SPS/PPS in front of every keyframe that lacks them.

    Many RTSP cameras send them only in the SDP, and a V4L2 encoder may send them once; a segment
    that starts at such a keyframe would not decode on its own.
    """

    def __init__(self, extradata: bytes | None = None) -> None:
        self._sps: bytes | None = None
        self._pps: bytes | None = None
        if extradata and extradata.find(_START) >= 0:  # Annex-B extradata (RTSP's SDP)
            self._remember(extradata)

    def ensure(self, data: bytes, keyframe: bool) -> bytes:
        has_sps = self._remember(data)
        if not keyframe or has_sps or self._sps is None or self._pps is None:
            return data
        return b"\x00\x00\x00\x01" + self._sps + b"\x00\x00\x00\x01" + self._pps + data

    def _remember(self, data: bytes) -> bool:
        has_sps = False
        for nal_type, nal in _leading_nals(data):
            if nal_type == _SPS:
                self._sps, has_sps = nal, True
            elif nal_type == _PPS:
                self._pps = nal
        return has_sps


class _Unit(NamedTuple):
    chunks: list[bytes]
    pts: float
    dts: float | None
    keyframe: bool


class AccessUnits:
    """Joins demuxed packets into access units: RTSP delivers an IDR in several packets that
    share one pts (the first may have none), and each Packet must be a whole picture."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pts: float | None = None
        self._dts: float | None = None
        self._key = False

    def add(self, data: bytes, pts: float | None, dts: float | None, key: bool) -> _Unit | None:
        """Returns the previous unit when ``data`` starts a new one."""
        done = None
        if self._pts is not None and pts is not None and pts != self._pts:
            done = self.flush()
        self._chunks.append(data)
        self._key = self._key or key
        if self._pts is None:
            self._pts, self._dts = pts, dts
        return done

    def flush(self) -> _Unit | None:
        """The unit in progress (at end of stream), if it has a time."""
        unit = None
        if self._chunks and self._pts is not None:
            unit = _Unit(self._chunks, self._pts, self._dts, self._key)
        self._chunks, self._pts, self._dts, self._key = [], None, None, False
        return unit


# --- encoders and frame sources -----------------------------------------------------------------


class H264Encoder:
    """An H.264 encoder configured for segments: a keyframe every ``gop`` frames exactly, headers
    repeated, no B-frames (no reordering delay for live video)."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: int,
        gop: int,
        bitrate_kbps: int,
        codecs: tuple[str, ...],
    ) -> None:
        self._args = (width, height, fps, gop, bitrate_kbps)
        self._codecs = codecs
        self._ctx: av.VideoCodecContext | None = None

    def open(self) -> None:
        failures = []
        for name in self._codecs:
            try:
                self._ctx = self._make(name)
                return
            except (av.error.FFmpegError, ValueError) as exc:
                failures.append(f"{name}: {exc}")
        raise CameraUnavailable("no usable H.264 encoder (" + "; ".join(failures) + ")")

    def _make(self, name: str) -> av.VideoCodecContext:
        width, height, fps, gop, kbps = self._args
        ctx = av.CodecContext.create(name, "w")
        assert isinstance(ctx, av.VideoCodecContext)
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base, ctx.framerate = Fraction(1, fps), Fraction(fps)
        ctx.gop_size, ctx.max_b_frames, ctx.bit_rate = gop, 0, kbps * 1000
        if name == "libx264":
            ctx.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
            }
        ctx.open()
        return ctx

    def encode(self, frame: av.VideoFrame | None) -> list[av.Packet[Any]]:
        assert self._ctx is not None, "open() first"
        return self._ctx.encode(frame)

    def close(self) -> None:
        self._ctx = None


def packet_times(pkt: av.Packet[Any]) -> tuple[float | None, float | None]:
    """(pts, dts) in seconds; dts None when it equals pts."""
    tb = pkt.time_base
    pts = None if pkt.pts is None else float(pkt.pts * tb)
    dts = None if pkt.dts is None or pkt.dts == pkt.pts else float(pkt.dts * tb)
    return pts, dts


def from_encoder(pkt: av.Packet[Any], wallclock: float) -> Packet:
    pts, _ = packet_times(pkt)
    assert pts is not None, "encoders always set pts"
    return Packet(bytes(pkt), pts, pkt.is_keyframe, wallclock)


Pace = Literal["live", "realtime", "simulated"]


class Pacer:
    """Stamps each packet's wall-clock time, and for a recorded stream also paces it.

    ``live``: the camera sets the pace; the time is when the packet arrived. ``realtime``: a file
    or generator released at the pace of its pts. ``simulated``: as fast as possible with times
    derived from the pts, so tests and the bench run ten minutes of video in seconds and still
    get clips cut at sensible times.
    """

    def __init__(self, pace: Pace) -> None:
        self._pace = pace
        self._origin: tuple[float, float, float] | None = None  # (pts, monotonic, wallclock)

    def wait(self, pts: float) -> float:
        if self._pace == "live":
            return time.time()
        if self._origin is None:
            self._origin = (pts, time.monotonic(), time.time())
        pts0, mono0, wall0 = self._origin
        if self._pace == "simulated":
            return wall0 + (pts - pts0)
        delay = mono0 + (pts - pts0) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return time.time()
