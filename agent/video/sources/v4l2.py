"""``v4l2:///dev/videoN``: a USB or CSI camera through V4L2, its own H.264 if it has it, else
encoded here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from fractions import Fraction

import av
import av.error

from agent.errors import CameraError
from agent.video.sources.base import CameraStalled, Packet, StreamInfo
from agent.video.sources.demux import DemuxSource
from agent.video.sources.h264 import H264Encoder, from_encoder

log = logging.getLogger("agent.cameras")


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
        self._encoder = H264Encoder(
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
                    yield from_encoder(pkt, wallclock)
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
