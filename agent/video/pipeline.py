"""The site's video: cameras -> segmenters -> in-memory rings, and alarm clips to the spool.

The daemon sees one object: it starts the cameras, asks for a clip when an alarm is committed,
releases a clip's segments when the centre has confirmed it, and reads status. What becomes of
a stored clip segment (chunked into the outbox) is the ``on_clip_segment`` callback's business,
so video never touches MQTT.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from agent.clock import rfc3339
from agent.config.model import Config, RecordingMode
from agent.errors import StoreError
from agent.supervision import Supervisor
from agent.video.camera import Camera
from agent.video.chain import BoxKey, clip_statement, head_statement
from agent.video.clips import ClipRecorder, ClipSegment
from agent.video.live import LiveFeed
from agent.video.ring import RingBuffer
from agent.video.segmenter import Segment, Segmenter, SegmentSink
from agent.video.sources import open_source
from agent.video.sources.base import StreamInfo
from agent.video.store import Recorder, SegmentStore

log = logging.getLogger("agent.video")


class Video:
    def __init__(
        self,
        cfg: Config,
        storage: Path,
        on_clip_segment: Callable[[ClipSegment], None],
        key: BoxKey,
    ) -> None:
        self._cfg = cfg
        self._key = key
        self._first_prev: dict[tuple[str, str], str] = {}  # (event, camera) -> chain start
        self._storage = storage
        self._on_clip_segment = on_clip_segment
        self.rings: dict[str, RingBuffer] = {}
        self.cameras: dict[str, Camera] = {}
        self._segmenters: list[Segmenter] = []
        self.spool: SegmentStore | None = None
        self.recording: SegmentStore | None = None
        self.clips: ClipRecorder | None = None
        self.live: dict[str, LiveFeed] = {}
        self._on_live: Callable[[str, str, Segment, int, bool], None] | None = None

    def start(self, supervisor: Supervisor | None = None) -> None:
        if not self._cfg.cameras:
            return
        self.spool = SegmentStore(
            self._storage / "spool", self._storage / "spool.db", int(self._cfg.storage.max_gb * 1e9)
        ).open()
        rec = self._cfg.recording
        if rec.mode is RecordingMode.CONTINUOUS and rec.path is not None:
            self.recording = SegmentStore(
                rec.path / "segments",
                rec.path / "recording.db",
                int((rec.max_gb or 1) * 1e9),
                retention_s=rec.retention_h * 3600,
            ).open()
        self.clips = ClipRecorder(self.rings, self.spool, self._on_clip_segment)
        for cam in self._cfg.cameras:
            # A little more than pre_alarm_s: the clip starts a moment after the press.
            self.rings[cam.id] = RingBuffer(cam.pre_alarm_s + 2 * cam.segment_s)
        self.clips.open(supervisor)
        for cam in self._cfg.cameras:
            sinks: list[SegmentSink] = [self.rings[cam.id].add]
            if self.recording is not None:
                sinks.append(Recorder(self.recording))
            segmenter = Segmenter(cam.id, cam.segment_s, StreamInfo.of(cam), sinks)
            self._segmenters.append(segmenter)
            self.cameras[cam.id] = Camera(cam.id, open_source(cam), segmenter)
            self.cameras[cam.id].start()
            self.live[cam.id] = LiveFeed(
                cam, self.rings[cam.id], partial(self._live_segment, cam.id)
            )
            self.live[cam.id].start()

    def stop(self) -> None:
        for feed in self.live.values():
            feed.stop()
        for camera in self.cameras.values():
            camera.stop()
        for segmenter in self._segmenters:
            segmenter.flush()
        if self.clips is not None:
            self.clips.close()
        for store in (self.spool, self.recording):
            if store is not None:
                store.close()

    def record_alarm(self, event_id: str, pressed_at: float, button_id: str) -> None:
        """Start this alarm's clips; returns at once (the work is on the clips thread)."""
        if self.clips is None:
            return
        for cam in self._cfg.cameras_for(button_id):
            self.clips.start(event_id, pressed_at, [cam.id], cam.pre_alarm_s, cam.post_alarm_s)

    def on_live(self, send: Callable[[str, str, Segment, int, bool], None]) -> None:
        """Where live segments go: (camera, session, segment, seq, final)."""
        self._on_live = send

    def _live_segment(
        self, camera_id: str, session: str, segment: Segment, seq: int, final: bool
    ) -> None:
        if self._on_live is not None:
            self._on_live(camera_id, session, segment, seq, final)

    def fetch(self, camera_id: str, start: float, end: float, fetch_id: str) -> int:
        """Recorded history from the camera's ring, sent like a clip under ``fetch_id``.
        Returns how many segments go out (0: the ring no longer holds that window)."""
        ring = self.rings.get(camera_id)
        if ring is None or self.spool is None:
            return 0
        segments = ring.between(start, end)
        if segments:  # the disk writes on a thread of their own: never on the caller's
            threading.Thread(
                target=self._send_fetched,
                args=(fetch_id, camera_id, segments),
                name=f"fetch-{camera_id}",
                daemon=True,
            ).start()
        return len(segments)

    def _send_fetched(self, fetch_id: str, camera_id: str, segments: list[Segment]) -> None:
        assert self.spool is not None
        try:
            for pos, segment in enumerate(segments):
                ref = self.spool.put(segment, pins=[fetch_id])
                self._on_clip_segment(
                    ClipSegment(
                        fetch_id,
                        camera_id,
                        pos,
                        pos == len(segments) - 1,
                        ref,
                        False,
                        segment.prev,
                        segment.link,
                    )
                )
        except StoreError as exc:
            log.error("fetch %s of camera %s stopped: %s", fetch_id, camera_id, exc)

    def release(self, event_id: str, camera_id: str | None = None) -> None:
        """The centre has the clip (or it was dropped): its segments may be evicted now."""
        if self.spool is None:
            return
        try:
            for ref in self.spool.refs(camera_id):
                if event_id in self.spool.pins(ref.path):
                    self.spool.unpin(ref.path, event_id)
        except StoreError as exc:
            log.error("cannot release the clip of %s: %s", event_id, exc)

    def signature(self, cs: ClipSegment) -> str:
        """The box's signature over a whole clip, carried by its final segment ("" before it):
        the centre checks the chain from the first segment's ``prev`` to the last ``link``."""
        clip = (cs.event_id, cs.camera_id)
        if cs.position == 0:
            self._first_prev[clip] = cs.prev
        if not cs.final:
            return ""
        first = self._first_prev.pop(clip, cs.prev)
        return self._key.sign(
            clip_statement(
                self._cfg.site.id, cs.event_id, cs.camera_id, first, cs.link, cs.position + 1
            )
        )

    def chain_heads(self) -> dict[str, dict[str, Any]]:
        """Each camera's newest link, signed: the periodic proof that history up to it is
        the box's (recorded segments fetched later must chain up to a signed head)."""
        heads: dict[str, dict[str, Any]] = {}
        at = rfc3339(time.time())
        for cid, ring in self.rings.items():
            segments = ring.segments()
            if segments:
                last = segments[-1]
                heads[cid] = {
                    "index": last.index,
                    "link": last.link,
                    "at": at,
                    "sig": self._key.sign(
                        head_statement(self._cfg.site.id, cid, last.index, last.link, at)
                    ),
                }
        return heads

    def over_budget(self) -> bool:
        return self.spool is not None and self.spool.total_bytes > self.spool.budget_bytes

    def status(self) -> dict[str, Any]:
        cams: dict[str, Any] = {}
        for cid, camera in self.cameras.items():
            st = camera.status()
            cams[cid] = {
                "state": st.state,
                "reconnects": st.reconnects,
                "last_packet_at": rfc3339(st.last_packet_at) if st.last_packet_at else None,
                "gaps": len(st.gaps),
                "buffered_s": round(sum(s.duration for s in self.rings[cid].segments()), 1),
            }
        written = sum(s.bytes_written_today() for s in (self.spool, self.recording) if s)
        for cid, feed in self.live.items():
            cams[cid]["live_sessions"] = len(feed.sessions)
        return {
            "cameras": cams,
            "video_bytes_written_today": written,
            "clips_recording": self.clips.active() if self.clips else 0,
        }
