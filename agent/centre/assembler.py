"""The centre's video: clips rebuilt from chunks, live segments appended, evidence written once.

Threads (docs/architecture.md): the ``link-video`` thread calls :meth:`Assembler.take` for each
message, which parses the chunk's header (at most 1 KB) and queues the chunk per site
(agent/centre/intake.py: bytes capped per site and in total, round-robin). The ``video`` thread does
the rest: holds chunks until their segment is complete and checks its sha256; a live segment is
appended to its session's file, a clip's is handed to agent/centre/clipwriter.py, which writes
the clip once all are in, verifies it, records it and confirms it. None of this runs on the
alarm path: alarms have their own MQTT connection and thread (agent/centre/receiver.py).

Bounds: every site's memory, open clips, live sessions and disk are held to its share by
agent/centre/holdings.py, which drops the least recently used and reports it. Completed clips are
looked up in the ledger, not remembered in memory.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.centre.clipwriter import ClipReceipts, ClipWriter, Send
from agent.centre.evidence import file_charge, pin_box_key
from agent.centre.holdings import CHUNK_OVERHEAD, Holdings, Key, Segment, Stream
from agent.centre.intake import FairQueue, Limits, Reporter, end_worker
from agent.centre.ledgerstore import LedgerStore
from agent.delivery.protocol import MAX_PUBKEY_BYTES, BoxTopic, ChunkHeader, decode_chunk, dumps
from agent.errors import ProtocolError
from agent.tracing import Point, Tracer, no_trace

log = logging.getLogger("agent.centre")

SWEEP_S = 5.0  # how often idle live sessions are looked for


@dataclass(frozen=True, slots=True)
class _Item:
    kind: str  # clip, live, pubkey
    payload: bytes
    header: ChunkHeader | None = None


class Assembler:
    def __init__(
        self,
        store: Path,
        prefix: str,
        ledger: LedgerStore,
        reporter: Reporter,
        limits: Limits,
        send: Send,
        tracer: Tracer = no_trace,
    ) -> None:
        self._store, self._reporter, self._limits = store, reporter, limits
        self._trace = tracer  # the benches' points (agent/tracing.py)
        self._queue: FairQueue[_Item] = FairQueue(
            1 << 30, limits.video_queue_site_bytes, 1 << 30, limits.video_queue_bytes
        )
        self._holdings = Holdings(store, limits, reporter)  # the video thread's only
        self._clips = ClipWriter(
            self._holdings, store, ledger, reporter, ClipReceipts(prefix, send)
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._swept = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="video", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """False if the thread is still busy (writing a long clip) after ``timeout``."""
        return end_worker(self._thread, self._stopping, self._queue, timeout)

    def drain(self) -> int:
        """Process, on the calling thread, everything queued now (tests; the thread not
        started). Returns how many."""
        done = 0
        while (got := self._queue.get(timeout=0)) is not None:
            self.process(*got)
            done += 1
        return done

    @property
    def held(self) -> int:
        """Bytes held in memory for incomplete segments, all sites (for status and tests)."""
        return self._holdings.held

    # --- on the link's thread -----------------------------------------------------------------

    def take(self, topic: BoxTopic, payload: bytes) -> None:
        try:
            if topic.kind == "pubkey":
                if len(payload) > MAX_PUBKEY_BYTES:
                    raise ProtocolError(f"a public key is at most {MAX_PUBKEY_BYTES} bytes")
                item = _Item("pubkey", payload)
            elif topic.kind in ("clip", "live"):
                header, data = decode_chunk(payload, live=topic.kind == "live")
                if header.camera_id != topic.camera:
                    raise ProtocolError(
                        f"a chunk of camera {header.camera_id} on the topic of {topic.camera}"
                    )
                item = _Item(topic.kind, data, header)
                self._trace(Point.CENTRE_CHUNK, header.sha256)
            else:
                return
        except ProtocolError as exc:
            self._reporter.report(topic.site, "refused", f"{topic.kind}: {exc}")
            return
        if not self._queue.put(topic.site, item, len(item.payload) + CHUNK_OVERHEAD):
            self._reporter.report(
                topic.site,
                "video_dropped",
                "more video waits than the site's share of the queue; chunks dropped",
            )

    # --- on the video thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            got = self._queue.get(timeout=1.0)
            if got is not None:
                self.process(*got)
            if time.monotonic() - self._swept > SWEEP_S:
                self.sweep()

    def sweep(self, now: float | None = None) -> None:
        """Close idle live sessions; now and then, remove partial clips gone stale."""
        self._swept = time.monotonic()
        self._holdings.sweep(now)

    def process(self, site: str, item: _Item) -> None:
        """Handle one queued message; never raises (the thread must go on)."""
        try:
            if item.kind == "pubkey":
                self._pubkey(site, item.payload)
            elif item.header is not None:
                self._chunk(site, item.kind == "live", item.header, item.payload)
        except ProtocolError as exc:
            self._reporter.report(site, "refused", f"{item.kind}: {exc}")
        except OSError as exc:
            self._reporter.report(site, "disk_error", f"{item.kind}: {exc}", logging.ERROR)
        except Exception:
            log.exception("site %s: failed on a %s message; carrying on", site, item.kind)

    def _chunk(self, site: str, live: bool, header: ChunkHeader, data: bytes) -> None:
        holdings = self._holdings
        key = (header.event_id, header.camera_id, "live" if live else "clip")
        stream = holdings.touch(site, key)
        if stream is None:
            if not live and self._clips.recorded(site, header):
                return
            stream = holdings.open(site, key)
        if header.segment in stream.parts or header.segment <= stream.last:
            if not live:
                self._clips.seen_again(site, header)
            return
        if (header.final and stream.final not in (None, header.segment)) or (
            not live and stream.final is not None and header.segment > stream.final
        ):
            raise ProtocolError(
                f"clip {header.event_id}/{header.camera_id}: a segment "
                "disagrees with the final segment named before"
            )
        seg = stream.assembling.setdefault(header.segment, Segment(header))
        if asdict(seg.header) | {"chunk": 0} != asdict(header) | {"chunk": 0}:
            raise ProtocolError(f"chunk {header.message_id} disagrees with its segment")
        if header.chunk in seg.chunks:
            return
        if header.size > self._limits.assembly_site_bytes:
            raise ProtocolError(
                f"a segment of {header.size} bytes exceeds the site's "
                f"{self._limits.assembly_site_bytes} bytes of assembly memory"
            )
        holdings.make_room(site, key, len(data) + CHUNK_OVERHEAD)
        if holdings.touch(site, key) is None:  # dropped to make room for itself: start again
            stream = holdings.open(site, key)
            seg = stream.assembling.setdefault(header.segment, Segment(header))
        seg.chunks[header.chunk] = data
        holdings.charge(site, stream, len(data) + CHUNK_OVERHEAD)
        if header.final:
            stream.final = header.segment
        if len(seg.chunks) == header.chunks:
            self._segment_done(site, key, stream, seg)

    def _segment_done(self, site: str, key: Key, stream: Stream, seg: Segment) -> None:
        h, live, holdings = seg.header, key[2] == "live", self._holdings
        body = b"".join(seg.chunks[i] for i in range(h.chunks))
        done = [i for i in stream.assembling if (i <= h.segment if live else i == h.segment)]
        for i in done:  # live: the older ones were skipped by the box and will not complete
            holdings.charge(
                site,
                stream,
                -sum(len(c) + CHUNK_OVERHEAD for c in stream.assembling.pop(i).chunks.values()),
            )
        if len(body) != h.size or hashlib.sha256(body).hexdigest() != h.sha256:
            self._reporter.report(
                site,
                "bad_segment",
                f"{h.event_id}/{h.camera_id} segment {h.segment} failed its sha256 check; dropped",
            )
            return
        if live:
            self._append_live(site, key, stream, h, body)
        else:
            self._clips.add_part(site, key, stream, h, body)

    def _append_live(
        self, site: str, key: Key, stream: Stream, h: ChunkHeader, body: bytes
    ) -> None:
        holdings = self._holdings
        path = self._store / site / "live" / h.event_id / f"{h.camera_id}.ts"
        new = not path.exists()
        # Beside the growing file, one line per segment: where it is and when it was
        # filmed (the box's clock), for the console's live view and its latency.
        line = (
            dumps(
                {
                    "segment": h.segment,
                    "start": h.start,
                    "end": h.end,
                    "size": len(body),
                    "final": h.final,
                }
            )
            + b"\n"
        )
        size = len(body) + len(line)
        if holdings.reserve(
            site, size, file_charge(len(body)) + file_charge(len(line)) if new else size
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(body)
            with open(path.with_suffix(".idx"), "ab") as f:
                f.write(line)
            self._trace(Point.CENTRE_LIVE, h.sha256)
        stream.last = h.segment
        if h.final:
            log.info(
                "live %s from %s/%s ended (%d segments)",
                h.event_id,
                site,
                h.camera_id,
                h.segment + 1,
            )
            holdings.drop(site, key)

    def _pubkey(self, site: str, pem: bytes) -> None:
        path = self._store / "keys" / f"{site}.pub"
        if pin_box_key(path, pem):
            log.warning(
                "site %s: box key trusted on first use (%s); register box keys at "
                "install to close that gap",
                site,
                path,
            )
        elif path.read_bytes().strip() != pem.strip():
            self._reporter.report(
                site,
                "key_changed",
                "the box presented a DIFFERENT key; "
                f"keeping the pinned one ({path}). If the box was replaced, "
                "put its new key there",
                logging.ERROR,
            )
