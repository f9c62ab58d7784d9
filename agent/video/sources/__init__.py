"""Camera sources: each yields H.264 access units (``Packet``) from one kind of camera.

``open_source`` is the one place a source is chosen from the config's ``source`` URL.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent.config import redact_url
from agent.video.sources.base import CameraUnavailable, Source
from agent.video.sources.demux import DemuxSource, rtsp_source
from agent.video.sources.picamera2 import Picamera2Source
from agent.video.sources.synthetic import SyntheticSource
from agent.video.sources.v4l2 import V4l2Source

if TYPE_CHECKING:
    from agent.config.model import CameraConfig

log = logging.getLogger("agent.cameras")


def open_source(cfg: CameraConfig) -> Source:
    """The one place a configured ``source`` becomes a Source (not yet opened: no I/O here)."""
    src, kind = cfg.source, cfg.kind
    gop = max(1, round(cfg.fps * cfg.segment_s))
    size = {"width": cfg.width, "height": cfg.height, "fps": cfg.fps}
    if kind == "synthetic":
        return SyntheticSource(
            width=cfg.width,
            height=cfg.height,
            fps=cfg.fps,
            segment_s=cfg.segment_s,
            bitrate_kbps=cfg.bitrate_kbps,
        )
    if kind == "file":
        return DemuxSource(src.removeprefix("file://"), name=src, pace="realtime", loop=True)
    if kind in ("rtsp", "rtsps"):
        return rtsp_source(src)
    if kind == "v4l2":
        device = src.removeprefix("v4l2://")
        return V4l2Source(device, gop=gop, bitrate_kbps=cfg.bitrate_kbps, **size)
    if kind == "picamera2":
        index = int(src.removeprefix("picamera2:") or 0)
        return Picamera2Source(index, gop=gop, bitrate_kbps=cfg.bitrate_kbps, **size)
    raise CameraUnavailable(
        f"camera {cfg.id}: unsupported source {redact_url(src)!r}; use synthetic:, file:///path, "
        "rtsp://host/path, v4l2:///dev/videoN or picamera2:N"
    )
