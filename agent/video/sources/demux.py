"""``file:///path`` (looped demux of any H.264 container) and ``rtsp://`` (TCP, timeouts, the
password never logged): whatever FFmpeg can demux, as Annex-B access units.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction

import av
import av.error
from av.bitstream import BitStreamFilterContext

from agent.config import redact_url
from agent.errors import CameraError
from agent.video.sources.base import CameraStalled, CameraUnavailable, Packet, StreamInfo
from agent.video.sources.h264 import AccessUnits, Pace, Pacer, ParameterSets, _Unit, packet_times

log = logging.getLogger("agent.cameras")


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
        self._pacer = Pacer(self._pace)
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
        units, skipping = AccessUnits(), False
        self._span: tuple[float, float, float, float] | None = None
        for pkt in self._container.demux(self._stream):
            if pkt.size == 0:
                continue  # PyAV's end-of-stream marker; it would put the bitstream filter at EOF
            if pkt.is_corrupt:
                skipping = True  # until the next keyframe: the frames between would be broken
                continue
            for clean in self._bsf.filter(pkt) if self._bsf else [pkt]:
                pts, dts = packet_times(clean)
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


def rtsp_source(url: str, *, io_timeout_s: float = 5.0) -> DemuxSource:
    """RTSP over TCP (UDP loses packets on school Wi-Fi and through NAT). FFmpeg 5 renamed the
    socket timeout: ``timeout`` is now microseconds (``stimeout`` is gone); PyAV's own
    ``timeout`` also guards the open and every read."""
    return DemuxSource(
        url,
        name=redact_url(url),
        options={"rtsp_transport": "tcp", "timeout": str(int(io_timeout_s * 1_000_000))},
    )
