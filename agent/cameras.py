"""Cameras: sources that yield H.264 access units, and a supervisor thread per camera.

The video path is a chain of small producers and sinks, as in picamera2's encoders and outputs:
a ``Source`` yields ``Packet``s, a ``Camera`` runs one source on its own thread and hands every
packet to one sink (the segmenter). Nothing here touches the disk.

Every packet is one access unit in Annex-B with SPS/PPS in-band before each IDR, whatever the
camera sends (AVCC from an MP4, parameter sets only in the RTSP SDP, a hardware encoder that
emits them once), so a segment cut at any keyframe decodes on its own.

Sources: ``synthetic:`` (a test pattern with a burned-in clock, encoded with libx264),
``file:///path`` (looped demux of any H.264 container), ``rtsp://`` (TCP, timeouts, password never
logged), ``v4l2:///dev/videoN`` (the camera's own H.264, else encoded here) and ``picamera2:N``.
``open_source`` chooses among them in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

import av
import av.error
from av.bitstream import BitStreamFilterContext
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from agent.config import redact_url
from agent.errors import CameraError

if TYPE_CHECKING:
    from agent.config import CameraConfig

log = logging.getLogger("agent.cameras")

CameraState = Literal["starting", "streaming", "reconnecting", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class Packet:
    """One H.264 access unit (Annex-B) as it left the camera.

    ``pts`` and ``dts`` are seconds of stream time; ``dts`` is None when it equals ``pts`` (no
    B-frames), which is every live camera we know of, but an MP4 may carry B-frames and the muxer
    needs decode order then. ``wallclock`` is ``time.time()`` at capture: clips are cut by it.
    """

    data: bytes
    pts: float
    keyframe: bool
    wallclock: float
    dts: float | None = None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the muxer needs to know about a stream besides the packets."""

    width: int
    height: int
    fps: Fraction


class Source(Protocol):
    """A camera as a producer of packets; reusable: ``open`` again after ``close``.

    ``name`` is safe to log (no password). ``packets`` must raise ``CameraStalled`` rather than
    block longer than the ``stall_s`` given to ``open``, and ``CameraError`` for anything else.
    """

    name: str

    def open(self, stall_s: float) -> StreamInfo: ...

    def packets(self) -> Iterator[Packet]: ...

    def close(self) -> None: ...


@runtime_checkable
class PacketSink(Protocol):
    def packet(self, packet: Packet) -> None: ...


class CameraStalled(CameraError, TimeoutError):
    """No packet arrived for ``stall_s`` seconds; the supervisor reconnects."""


class CameraUnavailable(CameraError):
    """This source cannot work on this machine as configured; retrying will not help."""


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


class _AccessUnits:
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


class _H264Encoder:
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


def _packet_times(pkt: av.Packet[Any]) -> tuple[float | None, float | None]:
    """(pts, dts) in seconds; dts None when it equals pts."""
    tb = pkt.time_base
    pts = None if pkt.pts is None else float(pkt.pts * tb)
    dts = None if pkt.dts is None or pkt.dts == pkt.pts else float(pkt.dts * tb)
    return pts, dts


def _from_encoder(pkt: av.Packet[Any], wallclock: float) -> Packet:
    pts, _ = _packet_times(pkt)
    assert pts is not None, "encoders always set pts"
    return Packet(bytes(pkt), pts, pkt.is_keyframe, wallclock)


Pace = Literal["live", "realtime", "simulated"]


class _Pacer:
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


_FONT = {  # 3x5 glyphs, one string of 15 bits per character
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ":": "000010000010000", ".": "000000000000010",
    " ": "000000000000000",
}  # fmt: skip


def _glyphs(scale: int) -> dict[str, list[bytes]]:
    """Each glyph as rows of luma bytes, ``scale`` times the 3x5 font: white on black."""
    out = {}
    for ch, bits in _FONT.items():
        rows = []
        for r in range(5):
            row = b"".join((b"\xeb" if bits[r * 3 + c] == "1" else b"\x10") * scale
                           for c in range(3))
            rows += [row] * scale
        out[ch] = rows
    return out


class SyntheticSource:
    """A moving test pattern with the frame number and wall-clock time burned in, so a person
    looking at a clip can tell at once whether frames are missing or out of order.

    Drawn with bytes and ``bytes.translate`` into the frame's planes, not numpy: the demo and
    the simulated school run from a plain ``pip install .`` (numpy would also cost 13 MB of
    RSS on the box); a 640x360 picture takes well under a millisecond this way.
    """

    name = "synthetic:"

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 15,
        segment_s: float = 2.0,
        bitrate_kbps: int = 1000,
        realtime: bool = True,
    ) -> None:
        self._width, self._height, self._fps = width - width % 2, height - height % 2, fps
        gop = max(1, round(fps * segment_s))
        self._encoder = _H264Encoder(
            self._width, self._height, fps, gop, bitrate_kbps, ("libx264",)
        )
        self._pace: Pace = "realtime" if realtime else "simulated"
        self._frame = 0

    def open(self, stall_s: float) -> StreamInfo:
        self._encoder.open()
        self._pacer = _Pacer(self._pace)
        self._scale = max(1, self._height // 60)
        self._font = _glyphs(self._scale)
        blank = av.VideoFrame(self._width, self._height, "yuv420p")
        self._stride = [plane.line_size for plane in blank.planes]
        w, h, ys = self._width, self._height, self._stride[0]
        # A diagonal ramp: luma (x + y) / 2, each row padded to the plane's stride.
        self._ramp = b"".join(bytes(((x + y) // 2) % 256 for x in range(w)).ljust(ys, b"\x10")
                              for y in range(h))
        half, cs = w // 2, self._stride[1]
        u_row = bytes(64 + 128 * x // max(1, half) for x in range(half)).ljust(cs, b"\x80")
        self._u = u_row * (h // 2)
        self._v = b"\x80" * (self._stride[2] * (h // 2))
        return StreamInfo(self._width, self._height, Fraction(self._fps))

    def packets(self) -> Iterator[Packet]:
        while True:
            pts = self._frame / self._fps
            wallclock = self._pacer.wait(pts)
            frame = av.VideoFrame(self._width, self._height, "yuv420p")
            for plane, data in zip(frame.planes, self._picture(wallclock), strict=True):
                plane.update(data)
            frame.pts, frame.time_base = self._frame, Fraction(1, self._fps)
            self._frame += 1
            for pkt in self._encoder.encode(frame):
                yield _from_encoder(pkt, wallclock)

    def _picture(self, wallclock: float) -> tuple[bytes, bytes, bytes]:
        """The Y, U and V planes of this frame: the ramp moving, a box sliding, the clock."""
        shift = (self._frame * 3) % 256
        luma = bytearray(self._ramp.translate(bytes((i + shift) % 256 for i in range(256))))
        box, ys = self._height // 6, self._stride[0]
        x = (self._frame * 4) % max(1, self._width - box)
        for y in range(box, 2 * box):
            luma[y * ys + x : y * ys + x + box] = b"\xeb" * box
        clock = time.strftime("%H:%M:%S", time.localtime(wallclock))
        self._burn(luma, f"{self._frame:07d} {clock}.{int(wallclock * 1000) % 1000:03d}")
        return bytes(luma), self._u, self._v

    def _burn(self, luma: bytearray, text: str) -> None:
        step, top, ys = 4 * self._scale, self._scale, self._stride[0]
        for i, ch in enumerate(text):
            left = self._scale + i * step
            if left + step > self._width:
                break
            for y in range(top - 1, top + 6 * self._scale):  # a black cell behind the glyph
                luma[y * ys + left - 1 : y * ys + left + step] = b"\x10" * (step + 1)
            for r, row in enumerate(self._font[ch]):
                y = top + r
                luma[y * ys + left : y * ys + left + len(row)] = row

    def close(self) -> None:
        self._encoder.close()


# --- demuxed sources (file, RTSP, V4L2 with H.264) ----------------------------------------------


class DemuxSource:
    """H.264 from any container or protocol FFmpeg reads, copied without re-encoding.

    ``name`` is what logs and errors show: for RTSP it is the URL with the password redacted,
    and FFmpeg's own exceptions (which carry the full URL) never leave this class unwrapped.
    """

    def __init__(
        self,
        target: str,
        *,
        name: str | None = None,
        format: str | None = None,
        options: dict[str, str] | None = None,
        pace: Pace = "live",
        loop: bool = False,
        open_timeout_s: float = 10.0,
    ) -> None:
        self._target = target
        self.name = target if name is None else name
        self._format, self._options = format, dict(options or {})
        self._pace, self._loop, self._open_timeout_s = pace, loop, open_timeout_s
        self._container: av.container.InputContainer | None = None
        self._stall_s = 5.0

    def open(self, stall_s: float) -> StreamInfo:
        self._stall_s = stall_s
        self._pacer = _Pacer(self._pace)
        self._offset = 0.0  # added to pts after each loop of a file, so time never runs back
        return self._open_container()

    def _open_container(self) -> StreamInfo:
        try:
            self._container = av.open(
                self._target,
                format=self._format,
                options=self._options,
                timeout=(self._open_timeout_s, self._stall_s),
            )
        except av.error.FFmpegError as exc:
            raise CameraError(f"{self.name}: cannot open: {exc.strerror}") from None
        try:
            return self._select_stream(self._container)
        except CameraError:
            self.close()  # release the device at once: V4L2 falls back to raw on the same one
            raise

    def _select_stream(self, container: av.container.InputContainer) -> StreamInfo:
        if not container.streams.video:
            raise CameraError(f"{self.name}: no video stream")
        self._stream = container.streams.video[0]
        ctx = self._stream.codec_context
        if ctx.name != "h264":
            raise CameraUnavailable(f"{self.name}: sends {ctx.name}; set the camera to H.264")
        avcc = ctx.extradata is not None and ctx.extradata[:1] == b"\x01"
        self._bsf = BitStreamFilterContext("h264_mp4toannexb", self._stream) if avcc else None
        self._params = ParameterSets(None if avcc else ctx.extradata)
        rate = self._stream.average_rate or self._stream.guessed_rate or Fraction(25)
        self._frame_s = float(1 / rate)
        return StreamInfo(self._stream.width, self._stream.height, Fraction(rate))

    def packets(self) -> Iterator[Packet]:
        try:
            while True:
                yield from self._demux_once()
                if not self._loop:
                    return
                self._next_loop()
        except av.error.ExitError:
            raise CameraStalled(f"{self.name}: no data for {self._stall_s:g} s") from None
        except av.error.FFmpegError as exc:
            raise CameraError(f"{self.name}: read failed: {exc.strerror}") from None

    def _next_loop(self) -> None:
        """Rewinds the file; its times continue one frame after the pass just played.

        A seek, not a reopen: opening probes the stream by decoding a few frames, which at
        1080p costs ~10 MB for a moment, and many cameras looping at once would add that up.
        """
        span = self._span
        if span is None:
            raise CameraError(f"{self.name}: no packets in the file")
        first_pts, first_dt, last_dt, max_pts = span
        assert self._container is not None
        try:
            self._container.seek(0)
        except av.error.FFmpegError:  # not seekable (a pipe): start it again
            self.close()
            self._open_container()
        self._offset += max(last_dt - first_dt, max_pts - first_pts) + self._frame_s

    def _demux_once(self) -> Iterator[Packet]:
        """Yields every access unit until end of stream, noting the times of the pass."""
        assert self._container is not None, "open() first"
        units, skipping = _AccessUnits(), False
        self._span: tuple[float, float, float, float] | None = None
        for pkt in self._container.demux(self._stream):
            if pkt.size == 0:
                continue  # PyAV's end-of-stream marker; it would put the bitstream filter at EOF
            if pkt.is_corrupt:
                skipping = True  # until the next keyframe: the frames between would be broken
                continue
            for clean in self._bsf.filter(pkt) if self._bsf else [pkt]:
                pts, dts = _packet_times(clean)
                unit = units.add(bytes(clean), pts, dts, clean.is_keyframe)
                if unit is not None and not (skipping := skipping and not unit.keyframe):
                    yield self._packet(unit)
        unit = units.flush()
        if unit is not None and not (skipping and not unit.keyframe):
            yield self._packet(unit)

    def _packet(self, unit: _Unit) -> Packet:
        decode_t = unit.pts if unit.dts is None else unit.dts
        if self._span is None:
            self._span = (unit.pts, decode_t, decode_t, unit.pts)
        else:
            first_pts, first_dt, _, max_pts = self._span
            self._span = (first_pts, first_dt, decode_t, max(max_pts, unit.pts))
        data = self._params.ensure(b"".join(unit.chunks), unit.keyframe)
        pts = unit.pts + self._offset
        dts = None if unit.dts is None else unit.dts + self._offset
        return Packet(data, pts, unit.keyframe, self._pacer.wait(pts), dts)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._bsf = None


class V4l2Source:
    """A USB/CSI camera through V4L2: its own H.264 when it has it (no CPU), else raw frames
    encoded here, on the Pi's hardware encoder (h264_v4l2m2m) when present, else libx264."""

    def __init__(
        self, device: str, *, width: int, height: int, fps: int, gop: int, bitrate_kbps: int
    ) -> None:
        self.name = f"v4l2://{device}"
        self._device, self._size, self._fps = device, (width, height), fps
        self._h264 = DemuxSource(
            device, name=self.name, format="v4l2", options=self._options(input_format="h264")
        )
        self._encoder = _H264Encoder(
            width, height, fps, gop, bitrate_kbps, ("h264_v4l2m2m", "libx264")
        )
        self._raw: av.container.InputContainer | None = None
        self._stall_s = 5.0

    def _options(self, **extra: str) -> dict[str, str]:
        size = f"{self._size[0]}x{self._size[1]}"
        return {"video_size": size, "framerate": str(self._fps), **extra}

    def open(self, stall_s: float) -> StreamInfo:
        self._stall_s = stall_s
        try:
            return self._h264.open(stall_s)
        except CameraError as exc:
            log.info("%s: no H.264 from the camera (%s); encoding here", self.name, exc)
        try:
            self._raw = av.open(
                self._device, format="v4l2", options=self._options(), timeout=(10.0, stall_s)
            )
        except av.error.FFmpegError as exc:
            raise CameraError(f"{self.name}: cannot open: {exc.strerror}") from None
        self._encoder.open()
        return StreamInfo(self._size[0], self._size[1], Fraction(self._fps))

    def packets(self) -> Iterator[Packet]:
        if self._raw is None:
            yield from self._h264.packets()
            return
        width, height = self._size
        try:
            for frame in self._raw.decode(video=0):
                wallclock = time.time()
                frame = frame.reformat(width=width, height=height, format="yuv420p")
                frame.pts, frame.time_base = round(frame.time * self._fps), Fraction(1, self._fps)
                for pkt in self._encoder.encode(frame):
                    yield _from_encoder(pkt, wallclock)
        except av.error.ExitError:
            raise CameraStalled(f"{self.name}: no frame for {self._stall_s:g} s") from None
        except av.error.FFmpegError as exc:
            raise CameraError(f"{self.name}: read failed: {exc.strerror}") from None

    def close(self) -> None:
        self._h264.close()
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        self._encoder.close()


class Picamera2Source:
    """A Raspberry Pi camera through picamera2: its hardware H.264 encoder feeds a small Output
    that queues frames for the camera thread (the encoder's thread must never block)."""

    def __init__(
        self, index: int, *, width: int, height: int, fps: int, gop: int, bitrate_kbps: int
    ) -> None:
        self.name = f"picamera2:{index}"
        self._index, self._size, self._fps = index, (width, height), fps
        self._gop, self._bitrate = gop, bitrate_kbps * 1000
        self._camera: Any = None

    def open(self, stall_s: float) -> StreamInfo:
        try:
            from picamera2 import Picamera2
            from picamera2.encoders import H264Encoder
        except ImportError:
            raise CameraUnavailable(
                f"{self.name}: picamera2 is not installed (apt install python3-picamera2)"
            ) from None
        self._stall_s = stall_s
        self._queue: queue.Queue[tuple[bytes, bool, float, float]] = queue.Queue(4 * self._gop)
        try:
            self._camera = Picamera2(self._index)
            self._camera.configure(
                self._camera.create_video_configuration(
                    main={"size": self._size}, controls={"FrameRate": self._fps}
                )
            )
            encoder = H264Encoder(bitrate=self._bitrate, repeat=True, iperiod=self._gop)
            self._camera.start_recording(encoder, _queue_output(self._queue))
        except (RuntimeError, OSError, IndexError) as exc:
            raise CameraError(f"{self.name}: cannot start: {exc}") from None  # closed by close()
        return StreamInfo(self._size[0], self._size[1], Fraction(self._fps))

    def packets(self) -> Iterator[Packet]:
        while True:
            try:
                data, key, pts, wallclock = self._queue.get(timeout=self._stall_s)
            except queue.Empty:
                raise CameraStalled(f"{self.name}: no frame for {self._stall_s:g} s") from None
            yield Packet(data, pts, key, wallclock)

    def close(self) -> None:
        if self._camera is not None:
            camera, self._camera = self._camera, None
            try:
                if camera.started:
                    camera.stop_recording()
            finally:
                camera.close()


def _queue_output(q: queue.Queue[tuple[bytes, bool, float, float]]) -> Any:
    """picamera2 Output that hands frames to ``q``; when the camera thread falls behind it drops
    whole GOPs (from the frame that did not fit to the next keyframe), never single frames."""
    from picamera2.outputs import Output

    class QueueOutput(Output):  # type: ignore[misc]  # picamera2 has no type information
        dropping = False

        def outputframe(
            self,
            frame: bytes,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: object = None,
            audio: bool = False,
        ) -> None:
            if audio or (self.dropping and not keyframe):
                return
            # picamera2 timestamps are sensor microseconds.
            pts = time.monotonic() if timestamp is None else timestamp / 1e6
            try:
                q.put_nowait((bytes(frame), keyframe, pts, time.time()))
                self.dropping = False
            except queue.Full:
                self.dropping = True

    return QueueOutput()


def open_source(cfg: CameraConfig) -> Source:
    """The one place a configured ``source`` becomes a Source (not yet opened: no I/O here)."""
    src, kind = cfg.source, cfg.kind
    gop = max(1, round(cfg.fps * cfg.segment_s))
    size = {"width": cfg.width, "height": cfg.height, "fps": cfg.fps}
    if kind == "synthetic":
        return SyntheticSource(
            width=cfg.width,
            height=cfg.height,
            fps=cfg.fps,
            segment_s=cfg.segment_s,
            bitrate_kbps=cfg.bitrate_kbps,
        )
    if kind == "file":
        return DemuxSource(src.removeprefix("file://"), name=src, pace="realtime", loop=True)
    if kind in ("rtsp", "rtsps"):
        return rtsp_source(src)
    if kind == "v4l2":
        device = src.removeprefix("v4l2://")
        return V4l2Source(device, gop=gop, bitrate_kbps=cfg.bitrate_kbps, **size)
    if kind == "picamera2":
        index = int(src.removeprefix("picamera2:") or 0)
        return Picamera2Source(index, gop=gop, bitrate_kbps=cfg.bitrate_kbps, **size)
    raise CameraUnavailable(
        f"camera {cfg.id}: unsupported source {redact_url(src)!r}; use synthetic:, file:///path, "
        "rtsp://host/path, v4l2:///dev/videoN or picamera2:N"
    )


def rtsp_source(url: str, *, io_timeout_s: float = 5.0) -> DemuxSource:
    """RTSP over TCP (UDP loses packets on school Wi-Fi and through NAT). FFmpeg 5 renamed the
    socket timeout: ``timeout`` is now microseconds (``stimeout`` is gone); PyAV's own
    ``timeout`` also guards the open and every read."""
    return DemuxSource(
        url,
        name=redact_url(url),
        options={"rtsp_transport": "tcp", "timeout": str(int(io_timeout_s * 1_000_000))},
    )


# --- the supervisor -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CameraStatus:
    state: CameraState
    last_packet_at: float | None
    reconnects: int
    gaps: tuple[tuple[float, float], ...]


_HEALTHY_S = 10.0  # a session that streamed this long resets the backoff to its first step
_MAX_GAPS = 100


class Camera:
    """Runs one source on thread ``camera-<id>`` and forwards its packets to ``sink``.

    On disconnect, stall or corrupt data it reconnects with jittered exponential backoff (about
    1 s first, capped at ``backoff_max_s``). Packet times stay increasing across reconnects: the
    new session's pts continue from the last one plus the wall-clock gap, so the segmenter sees
    the gap rather than time going backwards. Nothing raised by the source or the sink leaves the
    thread; a ``CameraUnavailable`` ends it in state ``failed``.
    """

    def __init__(
        self,
        camera_id: str,
        source: Source,
        sink: PacketSink | Callable[[Packet], None],
        *,
        stall_s: float = 5.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.camera_id = camera_id
        self._source = source
        self._sink = sink.packet if isinstance(sink, PacketSink) else sink
        self._stall_s, self._backoff_max_s = stall_s, backoff_max_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # _lock guards the status fields below: written by the camera thread, read by any thread
        # (status requests). Held only to copy or assign, never across I/O or the sink.
        self._lock = threading.Lock()
        self._state: CameraState = "starting"
        self._last_packet_at: float | None = None
        self._reconnects = 0
        self._gaps: deque[tuple[float, float]] = deque(maxlen=_MAX_GAPS)
        # Camera thread only: the last packet out, the pts offset of this session, the open gap.
        self._last_out: Packet | None = None
        self._offset: float | None = None
        self._gap_from: float | None = None
        self._frame_s = 0.04

    # any thread

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"camera-{self.camera_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Returns within ``timeout``. A read blocked inside FFmpeg cannot be interrupted; it
        ends by itself within ``stall_s`` and the (daemon) thread exits then."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "camera %s: still blocked in a read; it exits within %g s",
                    self.camera_id,
                    self._stall_s,
                )
        self._set_state("stopped")

    def status(self) -> CameraStatus:
        with self._lock:
            gaps = tuple(self._gaps)
            return CameraStatus(self._state, self._last_packet_at, self._reconnects, gaps)

    @property
    def state(self) -> CameraState:
        return self.status().state

    @property
    def last_packet_at(self) -> float | None:
        return self.status().last_packet_at

    @property
    def reconnects(self) -> int:
        """Times the camera came back after losing its stream (not failed attempts)."""
        return self.status().reconnects

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """(last packet before, first packet after) wall-clock times of each outage."""
        return list(self.status().gaps)

    # camera thread

    def _run(self) -> None:
        retrying = Retrying(
            wait=wait_exponential_jitter(initial=1, max=self._backoff_max_s, jitter=1),
            retry=retry_if_exception(self._retryable),
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        while not self._stopping.is_set():
            try:
                retrying(self._session)
            except CameraUnavailable as exc:
                log.error("camera %s: failed, not retrying: %s", self.camera_id, exc)
                self._set_state("failed")
                return
            except CameraError:
                break  # raised only once stopping
        self._set_state("stopped")

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # backoff that stop() cuts short

    def _retryable(self, exc: BaseException) -> bool:
        return not isinstance(exc, CameraUnavailable) and not self._stopping.is_set()

    def _before_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "camera %s: %s; retrying in %.1f s (attempt %d)",
            self.camera_id,
            exc,
            wait,
            state.attempt_number,
        )

    def _session(self) -> None:
        """One connection. Returns when stopping, or after a healthy session ends (so the next
        outage starts again at the first backoff step); raises CameraError otherwise."""
        if self._stopping.is_set():
            return
        started, streamed = time.monotonic(), False
        try:
            info = self._source.open(self._stall_s)
            self._frame_s, self._offset = float(1 / info.fps), None
            for pkt in self._source.packets():
                if self._stopping.is_set():
                    return
                self._forward(pkt)
                streamed = True
            raise CameraError(f"{self._source.name}: stream ended")
        except CameraUnavailable:
            raise
        except CameraError as exc:
            self._lost(streamed)
            if streamed and time.monotonic() - started >= _HEALTHY_S:
                log.warning("camera %s: %s; reconnecting", self.camera_id, exc)
                return
            raise
        except Exception as exc:  # a bug or an unexpected library error: keep the camera alive
            log.exception("camera %s: unexpected error", self.camera_id)
            self._lost(streamed)
            raise CameraError(f"{self._source.name}: {type(exc).__name__}") from exc
        finally:
            self._source.close()

    def _forward(self, pkt: Packet) -> None:
        pkt = self._rebase(pkt)
        gap_from, first = self._gap_from, self._last_out is None
        self._last_out, self._gap_from = pkt, None
        with self._lock:
            self._last_packet_at = pkt.wallclock
            if self._state not in ("failed", "stopped"):
                self._state = "streaming"
            if gap_from is not None:
                self._reconnects += 1
                self._gaps.append((gap_from, pkt.wallclock))
        if gap_from is not None:
            gap = pkt.wallclock - gap_from
            log.info("camera %s: streaming again after a %.1f s gap", self.camera_id, gap)
        elif first:
            log.info("camera %s: streaming from %s", self.camera_id, self._source.name)
        try:
            self._sink(pkt)
        except Exception:
            log.exception("camera %s: sink failed on a packet", self.camera_id)

    def _rebase(self, pkt: Packet) -> Packet:
        if self._offset is None:
            last = self._last_out
            if last is None:
                self._offset = 0.0
            else:
                gap = max(pkt.wallclock - last.wallclock, self._frame_s)
                self._offset = last.pts + gap - pkt.pts
        if self._offset == 0.0:
            return pkt
        dts = None if pkt.dts is None else pkt.dts + self._offset
        return dataclasses.replace(pkt, pts=pkt.pts + self._offset, dts=dts)

    def _lost(self, streamed: bool) -> None:
        if streamed and self._last_out is not None:
            self._gap_from = self._last_out.wallclock
        self._set_state("reconnecting")

    def _set_state(self, state: CameraState) -> None:
        with self._lock:
            if self._state not in ("failed", "stopped"):
                self._state = state
