"""Live view: one camera's newest segments to the centre while a session lasts, never on disk.

A feed uses the camera's sub-stream when ``live.source`` is set, else the main ring; the uplink
drops a segment rather than queue it when the link is behind (post_live,
agent/delivery/uplink/link.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from agent.config.model import CameraConfig, LiveMode
from agent.video.camera import Camera
from agent.video.ring import RingBuffer
from agent.video.segmenter import Segment, Segmenter
from agent.video.sources import open_source
from agent.video.sources.base import StreamInfo

log = logging.getLogger("agent.video")

LiveSender = Callable[[str, Segment, int, bool], None]  # session, segment, seq, final


class LiveFeed:
    """One camera's live view: its sub-stream when ``live.source`` is set, else the main ring.

    A session lasts the seconds the centre asked for; ``mode: always`` is a session that never
    ends. A sub-stream pipeline runs only while someone watches (or always). Segments reach the
    sender on the camera thread; the uplink keeps only the newest, so live never queues.
    """

    ALWAYS = "always"

    def __init__(self, cam: CameraConfig, ring: RingBuffer, send: LiveSender) -> None:
        self._cam = cam
        self._ring = ring
        self._send = send
        # Guards _sessions and _camera: commands (uplink thread) and segments (camera thread).
        self._lock = threading.Lock()
        self._sessions: dict[str, list[float]] = {}  # session -> [deadline (monotonic), seq]
        self._camera: Camera | None = None

    def start(self) -> None:
        if self._cam.live.source is None:
            self._ring.add_listener(self._on_segment)
        if self._cam.live.mode is LiveMode.ALWAYS:
            self.watch(self.ALWAYS, math.inf)

    def stop(self) -> None:
        self._ring.remove_listener(self._on_segment)
        with self._lock:
            camera, self._camera = self._camera, None
        if camera is not None:
            camera.stop()

    def watch(self, session: str, seconds: float) -> None:
        with self._lock:
            self._sessions[session] = [time.monotonic() + seconds, 0]
            start = self._cam.live.source is not None and self._camera is None
            if start:
                sub = replace(self._cam, source=self._cam.live_source)
                segmenter = Segmenter(
                    self._cam.id, sub.segment_s, StreamInfo.of(sub), [self._on_segment]
                )
                self._camera = Camera(f"{self._cam.id}-live", open_source(sub), segmenter)
        if start and self._camera is not None:
            self._camera.start()

    @property
    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def _on_segment(self, segment: Segment) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(s, int(v[1]), now >= v[0]) for s, v in self._sessions.items()]
            for session, _seq, final in due:
                if final:
                    del self._sessions[session]
                else:
                    self._sessions[session][1] += 1
            idle = not self._sessions and self._camera is not None
            camera = self._camera if idle else None
            if idle:
                self._camera = None
        for session, seq, final in due:
            self._send(session, segment, seq, final)
        if camera is not None:  # nobody watches the sub-stream any more
            threading.Thread(target=camera.stop, name="live-stop", daemon=True).start()
