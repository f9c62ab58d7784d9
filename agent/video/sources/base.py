"""What every camera source yields, and the errors that say why it stopped.

Every packet is one access unit in Annex-B with SPS/PPS in-band before each IDR, whatever the
camera sends (AVCC from an MP4, parameter sets only in the RTSP SDP, a hardware encoder that
emits them once), so a segment cut at any keyframe decodes on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from agent.errors import CameraError

if TYPE_CHECKING:
    from agent.config.model import CameraConfig

log = logging.getLogger("agent.cameras")


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

    @classmethod
    def of(cls, cam: CameraConfig) -> StreamInfo:
        """As configured (the source reports what it really sends when it opens)."""
        return cls(cam.width, cam.height, Fraction(cam.fps))


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
