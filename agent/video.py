"""The site's video: cameras -> segmenters -> in-memory rings, and alarm clips to the spool.

The daemon sees one object: it starts the cameras, asks for a clip when an alarm is committed,
releases a clip's segments when the centre has confirmed it, and reads status. What becomes of
a stored clip segment (chunked into the outbox) is the ``on_clip_segment`` callback's business,
so video never touches MQTT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Any

from agent.cameras import Camera, StreamInfo, open_source
from agent.chain import BoxKey, clip_statement, head_statement
from agent.clips import ClipRecorder, ClipSegment
from agent.config import Config, RecordingMode
from agent.outbox import BlobRef
from agent.protocol import ChunkHeader, Priority, Topics, dumps, rfc3339
from agent.segmenter import RingBuffer, Segmenter, SegmentSink
from agent.store import Recorder, SegmentStore, StoreError

log = logging.getLogger("agent.video")

CHUNK_BYTES = 16 * 1024  # see docs/uplink.md: what an alarm may have to wait behind

ChunkRow = tuple[Priority, str, str, bytes, BlobRef | None]


class Video:
    def __init__(self, cfg: Config, storage: Path,
                 on_clip_segment: Callable[[ClipSegment], None], key: BoxKey) -> None:
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

    def start(self) -> None:
        if not self._cfg.cameras:
            return
        self.spool = SegmentStore(self._storage / "spool", self._storage / "spool.db",
                                  int(self._cfg.storage.max_gb * 1e9)).open()
        rec = self._cfg.recording
        if rec.mode is RecordingMode.CONTINUOUS and rec.path is not None:
            self.recording = SegmentStore(
                rec.path / "segments", rec.path / "recording.db", int((rec.max_gb or 1) * 1e9),
                retention_s=rec.retention_h * 3600).open()
        self.clips = ClipRecorder(self.rings, self.spool, self._on_clip_segment)
        for cam in self._cfg.cameras:
            # A little more than pre_alarm_s: the clip starts a moment after the press.
            self.rings[cam.id] = RingBuffer(cam.pre_alarm_s + 2 * cam.segment_s)
        self.clips.open()
        for cam in self._cfg.cameras:
            sinks: list[SegmentSink] = [self.rings[cam.id].add]
            if self.recording is not None:
                sinks.append(Recorder(self.recording))
            segmenter = Segmenter(cam.id, cam.segment_s,
                                  StreamInfo(cam.width, cam.height, Fraction(cam.fps)), sinks)
            self._segmenters.append(segmenter)
            self.cameras[cam.id] = Camera(cam.id, open_source(cam), segmenter)
            self.cameras[cam.id].start()

    def stop(self) -> None:
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

    def chunks(self, topics: Topics, cs: ClipSegment) -> list[ChunkRow]:
        """The outbox rows of a stored clip segment; the final one signs the whole clip."""
        clip = (cs.event_id, cs.camera_id)
        if cs.position == 0:
            self._first_prev[clip] = cs.prev
        sig = ""
        if cs.final:
            first = self._first_prev.pop(clip, cs.prev)
            sig = self._key.sign(clip_statement(self._cfg.site.id, cs.event_id, cs.camera_id,
                                                first, cs.link, cs.position + 1))
        return clip_chunks(topics, cs, sig=sig)

    def chain_heads(self) -> dict[str, dict[str, Any]]:
        """Each camera's newest link, signed: the periodic proof that history up to it is
        the box's (recorded segments fetched later must chain up to a signed head)."""
        heads: dict[str, dict[str, Any]] = {}
        at = rfc3339(time.time())
        for cid, ring in self.rings.items():
            segments = ring.segments()
            if segments:
                last = segments[-1]
                heads[cid] = {"index": last.index, "link": last.link, "at": at,
                              "sig": self._key.sign(head_statement(self._cfg.site.id, cid,
                                                                   last.index, last.link, at))}
        return heads

    def over_budget(self) -> bool:
        return self.spool is not None and self.spool.total_bytes > self.spool.budget_bytes

    def status(self) -> dict[str, Any]:
        cams: dict[str, Any] = {}
        for cid, camera in self.cameras.items():
            st = camera.status()
            cams[cid] = {"state": st.state, "reconnects": st.reconnects,
                         "last_packet_at": rfc3339(st.last_packet_at) if st.last_packet_at
                         else None, "gaps": len(st.gaps),
                         "buffered_s": round(sum(s.duration for s in self.rings[cid].segments()),
                                             1)}
        written = sum(s.bytes_written_today() for s in (self.spool, self.recording) if s)
        return {"cameras": cams, "video_bytes_written_today": written,
                "clips_recording": self.clips.active() if self.clips else 0}


def clip_chunks(topics: Topics, cs: ClipSegment, chunk_bytes: int = CHUNK_BYTES,
                sig: str = "") -> list[ChunkRow]:
    """A stored clip segment as outbox rows: a JSON header each, the bytes read from the spool
    file at send time (so the outbox never holds a second copy of the video)."""
    ref = cs.segment
    count = max(1, -(-ref.bytes // chunk_bytes))
    rows: list[ChunkRow] = []
    for i in range(count):
        header = ChunkHeader(
            event_id=cs.event_id, camera_id=cs.camera_id, segment=cs.position, final=cs.final,
            chunk=i, chunks=count, sha256=ref.sha256, size=ref.bytes,
            start=rfc3339(ref.start), end=rfc3339(ref.end), prev=cs.prev, link=cs.link, sig=sig)
        length = min(chunk_bytes, ref.bytes - i * chunk_bytes)
        rows.append((Priority.CLIP, topics.clip(cs.camera_id), header.message_id,
                     dumps_header(header), BlobRef(ref.path, i * chunk_bytes, length)))
    return rows


def dumps_header(header: ChunkHeader) -> bytes:
    return dumps(asdict(header)) + b"\n"
