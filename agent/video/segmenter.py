"""Cuts a camera's packets into keyframe-aligned MPEG-TS segments, and keeps the recent ones.

A segment starts at a keyframe and ends just before the first keyframe at or after ``segment_s``
(never mid-GOP, as picamera2's SplittableOutput rotates only at keyframes), so each one decodes on
its own and an alarm clip is a list of whole segments. The packets are copied, not re-encoded.

Timestamps are continuous across segments (rebased once, to the first keyframe of the camera),
as HLS does: ``cat`` of consecutive segments is one valid .ts that plays smoothly, and a gap in
time (a reconnect) shows as a gap in the timestamps instead of time running backwards.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error

from agent.video.chain import GENESIS, next_link
from agent.video.sources.base import Packet, StreamInfo

log = logging.getLogger("agent.segmenter")

_TS_CLOCK = 90_000
# A camera whose keyframes are further apart than this (a misconfigured I-frame interval) would
# grow one segment without bound; it is closed here and video resumes at the next keyframe.
_MAX_SEGMENT_S = 60.0
_TS_TIME_BASE = Fraction(1, _TS_CLOCK)


@dataclass(frozen=True, slots=True)
class Segment:
    """A self-contained MPEG-TS file: ``start``/``end`` are wall-clock seconds (end = start +
    duration), ``index`` increases per camera and restarts with the agent."""

    camera_id: str
    index: int
    start: float
    end: float
    duration: float
    data: bytes
    sha256: str
    keyframes: int
    prev: str = GENESIS  # the previous segment's link: see agent/video/chain.py
    link: str = GENESIS

    def overlaps(self, t0: float, t1: float) -> bool:
        return self.start < t1 and self.end > t0

    def __repr__(self) -> str:  # the default would print megabytes of data
        return (
            f"Segment({self.camera_id!r}, index={self.index}, start={self.start:.3f}, "
            f"duration={self.duration:.3f}, bytes={len(self.data)})"
        )


SegmentSink = Callable[[Segment], None]


class Segmenter:
    """Packets in (``packet``, a Camera sink), Segments out to each of ``sinks``.

    Used by one thread, the camera's; call ``flush`` from it or after the camera has stopped.
    A sink that raises is logged and does not stop the others.
    """

    def __init__(
        self, camera_id: str, segment_s: float, info: StreamInfo, sinks: Sequence[SegmentSink]
    ) -> None:
        self.camera_id = camera_id
        self._segment_s = segment_s
        self._info = info
        self._sinks = tuple(sinks)
        frame_s = float(1 / info.fps) if info.fps else 0.04
        self._frame_s = frame_s
        self._slack = frame_s / 2  # a keyframe due at exactly segment_s may arrive a hair early
        self._gap_s = max(1.0, 3 * frame_s)  # a jump this large in pts is a reconnect
        self._packets: list[Packet] = []
        self._epoch: float | None = None  # stream time that maps to TS time 0
        self._index = 0
        self._link = GENESIS  # the hash chain over this camera's segments

    def packet(self, pkt: Packet) -> None:
        if self._packets and self._discontinuous(pkt):
            self.flush()
        if not self._packets:
            if not pkt.keyframe:
                return  # a segment starts at a keyframe; what comes before it is undecodable
            if self._epoch is None:
                # TS time 0 is the first decode time: a negative dts would make each segment's
                # muxer shift its own timestamps, and consecutive segments would overlap.
                self._epoch = _decode_time(pkt)
        elif pkt.keyframe and pkt.pts - self._packets[0].pts >= self._segment_s - self._slack:
            packets, self._packets = self._packets, []
            self._emit(packets, pkt.pts - packets[0].pts)
        elif pkt.pts - self._packets[0].pts > _MAX_SEGMENT_S:
            log.warning(
                "camera %s: no keyframe for %.0f s; set the camera's I-frame interval to %g s",
                self.camera_id,
                _MAX_SEGMENT_S,
                self._segment_s,
            )
            self.flush()
            return
        self._packets.append(pkt)

    def flush(self) -> None:
        """Closes the segment in progress (shutdown, or a gap in the stream)."""
        if self._packets:
            packets, self._packets = self._packets, []
            self._emit(packets, max(p.pts for p in packets) - packets[0].pts + self._frame_s)

    def _discontinuous(self, pkt: Packet) -> bool:
        """Time ran backwards or jumped (a reconnect, a looped file): the open segment ends."""
        step = _decode_time(pkt) - _decode_time(self._packets[-1])
        return step <= 0 or step > self._gap_s

    def _emit(self, packets: list[Packet], duration: float) -> None:
        try:
            data = self._mux(packets)
        except av.error.FFmpegError as exc:  # malformed data from the camera: lose one segment
            log.warning("camera %s: segment dropped, cannot mux it: %s", self.camera_id, exc)
            return
        start = packets[0].wallclock
        sha256 = hashlib.sha256(data).hexdigest()
        prev, self._link = self._link, next_link(self._link, sha256)
        segment = Segment(
            camera_id=self.camera_id,
            index=self._index,
            start=start,
            end=start + duration,
            duration=duration,
            data=data,
            sha256=sha256,
            keyframes=sum(p.keyframe for p in packets),
            prev=prev,
            link=self._link,
        )
        self._index += 1
        for sink in self._sinks:
            try:
                sink(segment)
            except Exception:
                log.exception("camera %s: a segment sink failed", self.camera_id)

    def _mux(self, packets: list[Packet]) -> bytes:
        assert self._epoch is not None
        buf = io.BytesIO()
        with av.open(buf, "w", format="mpegts") as out:
            stream = out.add_mux_stream(
                "h264", rate=self._info.fps, width=self._info.width, height=self._info.height
            )
            stream.time_base = _TS_TIME_BASE
            for p in packets:
                pkt = av.Packet(p.data)
                pkt.stream = stream
                pkt.time_base = _TS_TIME_BASE
                pkt.pts = round((p.pts - self._epoch) * _TS_CLOCK)
                pkt.dts = pkt.pts if p.dts is None else round((p.dts - self._epoch) * _TS_CLOCK)
                pkt.is_keyframe = p.keyframe
                out.mux(pkt)
        return buf.getvalue()


def _decode_time(pkt: Packet) -> float:
    return pkt.pts if pkt.dts is None else pkt.dts
