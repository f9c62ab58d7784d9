"""``picamera2:N``: the Raspberry Pi camera through picamera2, imported only when used (it
exists only on Raspberry Pi OS).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from agent.errors import CameraError
from agent.video.sources.base import CameraStalled, CameraUnavailable, Packet, StreamInfo

log = logging.getLogger("agent.cameras")


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
