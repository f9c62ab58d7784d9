"""``synthetic:``: a test pattern with a burned-in clock, encoded with libx264 (the simulated
school's cameras, the demo's and the tests').
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from fractions import Fraction

import av
import av.error

from agent.video.sources.base import Packet, StreamInfo
from agent.video.sources.h264 import H264Encoder, Pace, Pacer, from_encoder

log = logging.getLogger("agent.cameras")


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
            row = b"".join(
                (b"\xeb" if bits[r * 3 + c] == "1" else b"\x10") * scale for c in range(3)
            )
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
        self._encoder = H264Encoder(self._width, self._height, fps, gop, bitrate_kbps, ("libx264",))
        self._pace: Pace = "realtime" if realtime else "simulated"
        self._frame = 0

    def open(self, stall_s: float) -> StreamInfo:
        self._encoder.open()
        self._pacer = Pacer(self._pace)
        self._scale = max(1, self._height // 60)
        self._font = _glyphs(self._scale)
        blank = av.VideoFrame(self._width, self._height, "yuv420p")
        self._stride = [plane.line_size for plane in blank.planes]
        w, h, ys = self._width, self._height, self._stride[0]
        # A diagonal ramp: luma (x + y) / 2, each row padded to the plane's stride.
        self._ramp = b"".join(
            bytes(((x + y) // 2) % 256 for x in range(w)).ljust(ys, b"\x10") for y in range(h)
        )
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
                yield from_encoder(pkt, wallclock)

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
