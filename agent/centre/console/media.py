"""Video of the alarms at the console: each clip's state, the clip as MP4, the signed originals.

A clip's state comes from the receiver's verification (agent/centre/evidence.py), kept in its
ledger: **verified** (the hash chain holds and the box's signature matches its pinned key),
**altered** (a segment's content does not match its link, or the signature does not match:
forged, cut short or re-signed), **incomplete** (a segment missing, or the clip still arriving)
and **unverified** (no key of the box to check against).

The originals (``{camera}.ts`` and ``{camera}.verify.json``) are served byte for byte for
evidence; the MP4 the browser plays is a copy remuxed into the console's cache, never into the
receiver's store.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent.centre.console.remux import clip_to_mp4
from agent.centre.console.server import Request, Response
from agent.centre.holdings import PARTIAL

RANGE = re.compile(r"bytes=([0-9]{0,15})-([0-9]{0,15})")
SEND_BLOCK = 256 * 1024


def clip_state(problem: str) -> str:
    if not problem:
        return "verified"
    if "missing" in problem:
        return "incomplete"
    if problem.startswith("no box key"):
        return "unverified"
    return "altered"


def clip_views(
    store: Path, site: str, event: str, rows: list[tuple[str, int, str]]
) -> list[dict[str, Any]]:
    """The clips of one alarm: those written (camera, segments, problem from the ledger), then
    those still arriving (verified segments in the receiver's partial folder)."""
    views = [
        {
            "camera_id": camera,
            "state": clip_state(problem),
            "problem": problem,
            "segments": segments,
        }
        for camera, segments, problem in rows
    ]
    written = {camera for camera, _, _ in rows}
    partial = store / site / PARTIAL / event
    if partial.is_dir():
        for folder in sorted(partial.iterdir()):
            if folder.name not in written and folder.is_dir():
                views.append(
                    {
                        "camera_id": folder.name,
                        "state": "incomplete",
                        "problem": "still arriving",
                        "segments": sum(1 for p in folder.glob("*.seg")),
                    }
                )
    return views


def mp4(store: Path, cache: Path, site: str, event: str, camera: str) -> Path:
    return clip_to_mp4(
        store / site / event / f"{camera}.ts", cache / site / event / f"{camera}.mp4"
    )


def file_response(
    req: Request, path: Path, content_type: str, download: str | None = None
) -> Response:
    """A file, with single byte ranges (the video element asks for them to seek)."""
    size = path.stat().st_size
    start, end, status = 0, size - 1, 200
    match = RANGE.fullmatch(req.headers.get("range", ""))
    if match and (match.group(1) or match.group(2)):
        if match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        else:  # the last N bytes
            start = max(0, size - int(match.group(2)))
        if start > end:
            return Response(416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{download}"'

    def body(write: Any) -> None:
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (block := f.read(min(SEND_BLOCK, left))):
                write(block)
                left -= len(block)

    return Response(status, content_type=content_type, headers=headers, stream=body)
