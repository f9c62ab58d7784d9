"""What a box sends, made with the box's own code (agent/video/chain.py,
agent/delivery/protocol.py): for the tests that play a box on the wire, honest or not."""

from __future__ import annotations

import hashlib

from agent.delivery.protocol import ChunkHeader, encode_chunk
from agent.video.chain import GENESIS, BoxKey, clip_statement, next_link


def signed_chunks(
    key: BoxKey,
    site: str,
    event: str,
    segments: list[bytes],
    camera: str,
    chunk: int = 16 * 1024,
    live: bool = False,
) -> list[bytes]:
    """A clip (or a live session's segments) as chunk payloads: hash-chained, the final segment
    signed by ``key`` as the box signs it, each segment cut into ``chunk``-byte chunks."""
    out: list[bytes] = []
    prev = first = GENESIS
    for pos, data in enumerate(segments):
        sha = hashlib.sha256(data).hexdigest()
        link = next_link(prev, sha)
        final = pos == len(segments) - 1
        sig = (
            key.sign(clip_statement(site, event, camera, first, link, len(segments)))
            if final and not live
            else ""
        )
        count = max(1, -(-len(data) // chunk))
        for i in range(count):
            header = ChunkHeader(
                event,
                camera,
                pos,
                final,
                i,
                count,
                sha,
                len(data),
                "2026-11-25T08:00:00.000Z",
                "2026-11-25T08:00:02.000Z",
                prev,
                link,
                sig,
            )
            out.append(encode_chunk(header, data[i * chunk : (i + 1) * chunk]))
        prev = link
    return out
