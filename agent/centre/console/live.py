"""Live view: the receiver's growing live file, as fragmented MP4 records for the browser.

The receiver appends each verified live segment of a session to
``{store}/{site}/live/{session}/{camera}.ts`` and a line to ``{camera}.idx`` (the segment's
size, when the box filmed it, whether it is the last), the line after the bytes. This module
follows the index and turns each new segment into fragmented MP4 (remux.py), sent as one record:

    4 bytes (big-endian) header length, the header (JSON), 4 bytes body length, the body

The header carries the segment's capture time (``start_ms``, the box's clock) so the page can
show how old the picture on the screen is (glass to glass, as long as the box's clock is synced).
The first record's body starts with the init segment and its header names the codec.

A viewer that joins late starts at the newest segment, and one that falls behind skips to it:
live is about now (the box does the same on its uplink, docs/protocol.md).
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.centre.console.remux import RemuxError, codec_of, segment_to_fmp4
from agent.clock import parse_rfc3339

log = logging.getLogger("agent.console")

FOLLOW_S = 0.02  # how often the index is looked at
START_WAIT_S = 20.0  # a box needs a segment's time (and the command's round trip) to begin
IDLE_S = 10.0  # no new segment for this long: the session is over (or the box is gone)


def record(header: dict[str, object], body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + struct.pack(">I", len(body)) + body


def follow(folder: Path, camera: str, stopping: threading.Event) -> Iterator[bytes]:
    """Records for each segment as it arrives, until the session's final segment, IDLE_S of
    silence, or ``stopping``."""
    index, video = folder / f"{camera}.idx", folder / f"{camera}.ts"
    deadline = time.monotonic() + START_WAIT_S
    while not index.exists():
        if stopping.wait(FOLLOW_S) or time.monotonic() > deadline:
            return
    first = True
    last_new = time.monotonic()
    with open(index, "rb") as lines, open(video, "rb") as ts:
        segments = _Segments(lines)
        while not stopping.is_set():
            pending = segments.read()
            if not pending:
                if time.monotonic() - last_new > IDLE_S:
                    return
                stopping.wait(FOLLOW_S)
                continue
            last_new = time.monotonic()
            seg = pending[-1]  # the newest; older ones are skipped (live is now)
            ts.seek(seg.offset)
            try:
                init, media = segment_to_fmp4(ts.read(seg.size))
            except RemuxError as exc:
                log.warning(
                    "live %s/%s: segment %d skipped: %s", folder.name, camera, seg.number, exc
                )
                continue
            header: dict[str, object] = {"segment": seg.number, "start_ms": seg.start_ms}
            if first:
                header["codec"] = codec_of(init)
            yield record(header, init + media if first else media)
            first = False
            if seg.final:
                return


@dataclass(frozen=True, slots=True)
class _Segment:
    offset: int  # in the .ts
    size: int
    number: int
    start_ms: float | None  # when the box filmed its first frame (its clock)
    final: bool


class _Segments:
    """The index file (the receiver's, so trusted as far as its own files), read a complete
    line at a time."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._rest = b""
        self._offset = 0

    def read(self) -> list[_Segment]:
        self._rest += self._file.read()
        *lines, self._rest = self._rest.split(b"\n")
        out = []
        for raw in lines:
            line = json.loads(raw)
            start = parse_rfc3339(line["start"])
            out.append(
                _Segment(
                    self._offset,
                    int(line["size"]),
                    int(line["segment"]),
                    None if start is None else start * 1000,
                    bool(line["final"]),
                )
            )
            self._offset += int(line["size"])
        return out
