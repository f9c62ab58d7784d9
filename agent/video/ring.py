"""The in-memory pre-alarm buffer: the newest whole segments of one camera.

Nothing reaches the disk until an alarm, unless continuous recording is configured: the ring is
where the "before the press" part of every clip comes from.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from agent.video.segmenter import Segment, SegmentSink

log = logging.getLogger("agent.segmenter")


class RingBuffer:
    """The newest whole segments covering at least ``keep_s`` seconds, in memory.

    The oldest segment goes once the rest still cover ``keep_s`` back from the newest end, or when
    the total passes ``max_bytes`` (a camera sending far more than its configured bitrate must not
    exhaust the Pi's memory; the pre-alarm window then shrinks and that is logged once).
    ``add`` is the Segmenter sink; listeners hear every new segment after it is stored.
    """

    def __init__(self, keep_s: float, max_bytes: int = 64 * 2**20) -> None:
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        # _lock guards _segments, _bytes and _listeners. add() runs on the camera thread, reads
        # and listener changes on any thread (clip workers, status). add() calls listeners after
        # releasing it, on the camera thread; only add_listener's backlog replay holds it.
        self._lock = threading.Lock()
        self._segments: deque[Segment] = deque()
        self._bytes = 0
        self._listeners: list[SegmentSink] = []
        self._memory_capped = False

    def add(self, segment: Segment) -> None:
        with self._lock:
            self._segments.append(segment)
            self._bytes += len(segment.data)
            self._evict()
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(segment)
            except Exception:
                log.exception("camera %s: a segment listener failed", segment.camera_id)

    def _evict(self) -> None:
        segs = self._segments
        while len(segs) > 1 and segs[-1].end - segs[1].start >= self.keep_s:
            self._bytes -= len(segs.popleft().data)
        capped = False
        while len(segs) > 1 and self._bytes > self.max_bytes:
            self._bytes -= len(segs.popleft().data)
            capped = True
        if capped and not self._memory_capped:
            log.warning(
                "camera %s: pre-alarm buffer capped at %d MB: only %.0f s kept, not %.0f s; "
                "lower the camera's bitrate_kbps",
                segs[-1].camera_id,
                self.max_bytes // 2**20,
                segs[-1].end - segs[0].start,
                self.keep_s,
            )
        self._memory_capped = capped or self._memory_capped

    def between(self, t0: float, t1: float) -> list[Segment]:
        """Segments overlapping the wall-clock window [t0, t1], oldest first."""
        with self._lock:
            return [s for s in self._segments if s.overlaps(t0, t1)]

    def segments(self) -> list[Segment]:
        with self._lock:
            return list(self._segments)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def add_listener(self, fn: SegmentSink, *, backlog_from: float | None = None) -> None:
        """Calls ``fn(segment)`` for each new segment, on the camera thread (keep it short).

        With ``backlog_from``, ``fn`` first gets every stored segment that ends after it, in the
        same locked step as the registration, so a clip neither misses nor repeats a segment that
        arrives meanwhile. That replay runs under the lock: ``fn`` must only hand the segment on
        (a queue put), never call back into the ring.
        """
        with self._lock:
            if backlog_from is not None:
                for segment in self._segments:
                    if segment.end > backlog_from:
                        fn(segment)
            self._listeners.append(fn)

    def remove_listener(self, fn: SegmentSink) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)
