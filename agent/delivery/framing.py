"""Clip and live segments as MQTT messages: a JSON header line, then a slice of the video.

The one place video becomes outbox rows and live payloads (docs/protocol.md, "clip" and "live").
Chunks are small (``CHUNK_BYTES`` at most; on a slow link the uplink's pacer asks for smaller)
because an alarm may have to wait behind one on the wire.
"""

from __future__ import annotations

from dataclasses import asdict

from agent.clock import rfc3339
from agent.delivery.outbox import BlobRef
from agent.delivery.protocol import MAX_CHUNKS, ChunkHeader, Priority, Topics, dumps
from agent.video.clips import ClipSegment
from agent.video.segmenter import Segment

CHUNK_BYTES = 16 * 1024  # see docs/uplink.md: what an alarm may have to wait behind

ChunkRow = tuple[Priority, str, str, bytes, BlobRef | None]


def clip_chunks(
    topics: Topics, cs: ClipSegment, chunk_bytes: int = CHUNK_BYTES, sig: str = ""
) -> list[ChunkRow]:
    """A stored clip segment as outbox rows: a JSON header each, the bytes read from the spool
    file at send time (so the outbox never holds a second copy of the video)."""
    ref = cs.segment
    chunk_bytes = max(chunk_bytes, -(-ref.bytes // MAX_CHUNKS))
    count = max(1, -(-ref.bytes // chunk_bytes))
    rows: list[ChunkRow] = []
    for i in range(count):
        header = ChunkHeader(
            event_id=cs.event_id,
            camera_id=cs.camera_id,
            segment=cs.position,
            final=cs.final,
            chunk=i,
            chunks=count,
            sha256=ref.sha256,
            size=ref.bytes,
            start=rfc3339(ref.start),
            end=rfc3339(ref.end),
            prev=cs.prev,
            link=cs.link,
            sig=sig,
        )
        length = min(chunk_bytes, ref.bytes - i * chunk_bytes)
        rows.append(
            (
                Priority.CLIP,
                topics.clip(cs.camera_id),
                header.message_id,
                dumps_header(header),
                BlobRef(ref.path, i * chunk_bytes, length),
            )
        )
    return rows


def live_chunks(
    session: str, segment: Segment, seq: int, final: bool, chunk_bytes: int = CHUNK_BYTES
) -> list[bytes]:
    """A live segment as message payloads, built in memory: live video never touches the disk."""
    data = segment.data
    chunk_bytes = max(chunk_bytes, -(-len(data) // MAX_CHUNKS))
    count = max(1, -(-len(data) // chunk_bytes))
    return [
        dumps_header(
            ChunkHeader(
                event_id=session,
                camera_id=segment.camera_id,
                segment=seq,
                final=final,
                chunk=i,
                chunks=count,
                sha256=segment.sha256,
                size=len(data),
                start=rfc3339(segment.start),
                end=rfc3339(segment.end),
                prev=segment.prev,
                link=segment.link,
            )
        )
        + data[i * chunk_bytes : (i + 1) * chunk_bytes]
        for i in range(count)
    ]


def dumps_header(header: ChunkHeader) -> bytes:
    return dumps(asdict(header)) + b"\n"
