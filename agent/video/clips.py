"""Pre/post-alarm clips: the ring's recent segments, then new ones until the window closes.

The alarm is already committed when ``ClipRecorder.start`` is called, and ``start`` only takes a
snapshot of memory and queues work: the disk writes (the store's fsyncs) and the ``on_segment``
calls happen on the recorder's own thread, ``clips``, so a slow SD card never delays an alarm.

Each segment is stored pinned to the event id, then announced. Whether a segment is the last of
its clip is known only when the next one arrives, so each is announced when its successor does,
and the last one with ``final=True`` once a segment reaches ``pressed_at + post_s``. If the camera
dies first, the last one goes out after ``grace_s`` with ``final=True, truncated=True``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from agent.errors import StoreError
from agent.supervision import Supervisor, Worker
from agent.video.ring import RingBuffer
from agent.video.segmenter import Segment
from agent.video.store import SegmentRef, SegmentStore

log = logging.getLogger("agent.clips")


@dataclass(frozen=True, slots=True)
class ClipSegment:
    """One stored segment of an event's clip from one camera; ``position`` counts from 0."""

    event_id: str
    camera_id: str
    position: int
    final: bool
    segment: SegmentRef
    truncated: bool = False
    prev: str = ""  # the segment's place in its camera's hash chain (agent/video/chain.py)
    link: str = ""


@dataclass(eq=False)
class _Clip:
    """One camera's clip for one event. The worker owns it once ``start`` has registered it;
    ``listener`` is the only method other threads (the camera's) call."""

    event_id: str
    camera_id: str
    ring: RingBuffer
    window_end: float  # wall clock: pressed_at + post_s
    deadline: float  # monotonic: stop waiting for the camera after this
    inbox: queue.SimpleQueue[_Item]
    position: int = 0
    held: Segment | None = None

    def listener(self, segment: Segment) -> None:
        self.inbox.put((self, segment))


_Item = tuple[_Clip, Segment] | tuple[()] | None  # a segment for a clip, a tick, or stop


class ClipRecorder:
    """Turns alarms into stored, announced clip segments, one worker thread for all cameras."""

    def __init__(
        self,
        rings: Mapping[str, RingBuffer],
        store: SegmentStore,
        on_segment: Callable[[ClipSegment], None],
        *,
        grace_s: float = 10.0,
    ) -> None:
        self._rings = rings
        self._store = store
        self._on_segment = on_segment
        self._grace_s = grace_s
        # The queue is the only way work crosses into the worker: start() runs on the alarm
        # path, listeners on camera threads, and both only put items. _lock guards _clips,
        # which the worker changes and status readers count.
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._clips: list[_Clip] = []
        self._worker: Worker | None = None

    def open(self, supervisor: Supervisor | None = None) -> None:
        """Start the ``clips`` thread under ``supervisor`` (agent/supervision.py)."""
        self._worker = (supervisor or Supervisor()).spawn(
            "clips", self._run, wake=lambda: self._queue.put(())
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stores what each open clip has so far (final, truncated) and stops the worker."""
        if self._worker is not None:
            self._worker.stopping.set()
            self._queue.put(None)
            self._worker.stop(timeout)

    def active(self) -> int:
        """Clips still waiting for post-alarm video (for status)."""
        with self._lock:
            return len(self._clips)

    def start(
        self,
        event_id: str,
        pressed_at: float,
        camera_ids: Iterable[str],
        pre_s: float,
        post_s: float,
    ) -> None:
        """Begins a clip per camera covering [pressed_at - pre_s, pressed_at + post_s]. Returns
        at once; the work is done on the ``clips`` thread."""
        deadline = time.monotonic() + (pressed_at + post_s - time.time()) + self._grace_s
        for camera_id in camera_ids:
            ring = self._rings.get(camera_id)
            if ring is None:
                log.warning("event %s: no camera %r, no clip from it", event_id, camera_id)
                continue
            clip = _Clip(event_id, camera_id, ring, pressed_at + post_s, deadline, self._queue)
            with self._lock:
                self._clips.append(clip)
            ring.add_listener(clip.listener, backlog_from=pressed_at - pre_s)

    # worker thread

    def _run(self, worker: Worker) -> None:
        """The thread's body; after a crash it goes on with the clips still open (the
        segment being handled is lost, the clip is stored without it)."""
        while True:
            worker.beat()
            try:
                item = self._queue.get(timeout=0.5)  # the timeout is the deadline tick
            except queue.Empty:
                item = ()
            if item is None:
                break
            if item and item[0] in self._open_clips():
                self._add(*item)
            self._expire(time.monotonic())
        for clip in self._open_clips():
            self._finish(clip, truncated=True)

    def _add(self, clip: _Clip, segment: Segment) -> None:
        if clip.held is not None:
            self._emit(clip, clip.held, final=False)
        clip.held = segment
        if segment.end >= clip.window_end:
            self._finish(clip, truncated=False)

    def _expire(self, now: float) -> None:
        for clip in self._open_clips():
            if now > clip.deadline:
                log.warning(
                    "event %s: camera %s sent no video up to the end of the clip; "
                    "sending what there is",
                    clip.event_id,
                    clip.camera_id,
                )
                self._finish(clip, truncated=True)

    def _finish(self, clip: _Clip, *, truncated: bool) -> None:
        clip.ring.remove_listener(clip.listener)
        with self._lock:
            if clip not in self._clips:
                return
            self._clips.remove(clip)
        if clip.held is None:
            log.warning("event %s: no video at all from camera %s", clip.event_id, clip.camera_id)
            return
        self._emit(clip, clip.held, final=True, truncated=truncated)
        clip.held = None

    def _emit(self, clip: _Clip, segment: Segment, *, final: bool, truncated: bool = False) -> None:
        try:
            ref = self._store.put(segment, pins=[clip.event_id])
        except StoreError as exc:
            log.error(
                "event %s: camera %s segment %d not stored, so not sent: %s",
                clip.event_id,
                clip.camera_id,
                segment.index,
                exc,
            )
            return
        out = ClipSegment(
            clip.event_id,
            clip.camera_id,
            clip.position,
            final,
            ref,
            truncated,
            segment.prev,
            segment.link,
        )
        clip.position += 1
        try:
            self._on_segment(out)
        except Exception:
            log.exception("event %s: on_segment failed", clip.event_id)

    def _open_clips(self) -> list[_Clip]:
        with self._lock:
            return list(self._clips)
