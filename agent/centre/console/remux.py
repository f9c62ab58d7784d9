"""MPEG-TS from the boxes into MP4 for the browser, with PyAV (already the agent's video
library): packets are copied, never re-encoded, so a clip is ready in milliseconds and the
picture is exactly the evidence's.

- :func:`clip_to_mp4`: a whole clip as an ordinary MP4 (``faststart``: the index first, so
  the browser can start playing and seek at once), written atomically to a cache file; the
  evidence file itself is only read.
- :func:`segment_to_fmp4`: one live segment as fragmented MP4 (an init segment, then
  ``moof``/``mdat`` fragments), the form Media Source Extensions take.

The browser's MediaSource needs the codec string (``avc1.PPCCLL``: profile, constraints and
level from the stream's ``avcC``): :func:`codec_of` reads it from an init segment.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

import av
import av.error

from agent.errors import AgentError

FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


class RemuxError(AgentError, ValueError):
    """The video could not be read as H.264 in MPEG-TS (it may be damaged or altered)."""


def _copy(source: av.container.InputContainer, target: av.container.OutputContainer) -> int:
    if not source.streams.video:
        raise RemuxError("no video stream")
    stream_in = source.streams.video[0]
    stream_out = target.add_stream_from_template(stream_in)
    copied = 0
    for packet in source.demux(stream_in):
        if packet.dts is None:  # the demuxer's end-of-stream marker
            continue
        packet.stream = stream_out
        target.mux(packet)
        copied += 1
    return copied


def clip_to_mp4(ts: Path, mp4: Path) -> Path:
    """Write ``mp4`` from the clip ``ts`` unless it exists (the cache); returns ``mp4``."""
    if mp4.exists():
        return mp4
    mp4.parent.mkdir(parents=True, exist_ok=True)
    tmp = mp4.with_name(f".{mp4.name}.{secrets.token_hex(4)}.tmp")
    try:
        with (
            av.open(str(ts), "r") as source,
            av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as target,
        ):
            if not _copy(source, target):
                raise RemuxError(f"{ts.name} holds no video packets")
        os.replace(tmp, mp4)
    except (av.error.FFmpegError, OSError) as exc:
        raise RemuxError(f"cannot remux {ts.name}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return mp4


def segment_to_fmp4(segment: bytes) -> tuple[bytes, bytes]:
    """One self-contained TS segment as (init segment, media fragments)."""
    out = io.BytesIO()
    try:
        with (
            av.open(io.BytesIO(segment), "r", format="mpegts") as source,
            av.open(out, "w", format="mp4", options=FRAGMENTED) as target,
        ):
            _copy(source, target)
    except av.error.FFmpegError as exc:
        raise RemuxError(f"cannot remux a live segment: {exc}") from exc
    data = out.getvalue()
    split = data.find(b"moof") - 4
    if split < 0:
        raise RemuxError("a live segment gave no media fragment")
    return data[:split], data[split:]


def codec_of(init: bytes) -> str:
    """``avc1.PPCCLL`` from an init segment's avcC box, for ``MediaSource.addSourceBuffer``."""
    at = init.find(b"avcC")
    if at < 0 or len(init) < at + 8:
        raise RemuxError("no H.264 configuration (avcC) in the init segment")
    return "avc1." + init[at + 5 : at + 8].hex()
