"""The centre's video: clips rebuilt from chunks, live segments appended, evidence written once.

Threads (docs/architecture.md): the ``link-video`` thread calls :meth:`Assembler.take` for each
message, which parses the chunk's header (at most 1 KB) and queues the chunk per site
(agent/intake.py: bytes capped per site and in total, round-robin). The ``video`` thread does
the rest: holds chunks until their segment is complete, checks its sha256, writes each verified
segment to ``{site}/.partial/{event}/{camera}/``, and once a clip's segments are all in, writes
the clip, verifies its hash chain and the box's signature, and records it. None of this runs on
the alarm path: alarms have their own MQTT connection and thread (agent/receiver.py).

Bounds: every site's memory, open clips, live sessions and disk are held to its share by
agent/holdings.py, which drops the least recently used and reports it. Completed clips are
looked up in the ledger, not remembered in memory.

Evidence is written once: a clip file and its verdict are linked into place only if no file of
that name exists, and the ledger refuses a second row. A later copy of the same (site, event,
camera) whose segments differ is refused and reported, also after a restart (the ledger keeps
each segment's sha256); an identical copy is confirmed again, as the box may be waiting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.centre.evidence import (
    file_charge,
    file_sha256,
    pin_box_key,
    read_part_header,
    verify_clip,
    write_once,
)
from agent.centre.holdings import (
    CHUNK_OVERHEAD,
    FINAL,
    PART_OVERHEAD,
    Holdings,
    Key,
    Segment,
    Stream,
)
from agent.centre.intake import FairQueue, Limits, Reporter, end_worker
from agent.centre.ledgerstore import LedgerStore
from agent.delivery.protocol import (
    MAX_PUBKEY_BYTES,
    BoxTopic,
    ChunkHeader,
    Receipt,
    Topics,
    decode_chunk,
    dumps,
)
from agent.errors import ProtocolError
from agent.tracing import Point, Tracer, no_trace

log = logging.getLogger("agent.centre")

SWEEP_S = 5.0  # how often idle live sessions are looked for
RECEIPT_EVERY_S = 5.0

Send = Callable[[str, bytes], None]  # publish (topic, payload) on the video link


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
        self._store, self._prefix, self._ledger = store, prefix, ledger
        self._trace = tracer  # the benches' points (agent/tracing.py)
        self._reporter, self._limits, self._send = reporter, limits, send
        self._queue: FairQueue[_Item] = FairQueue(
            1 << 30, limits.video_queue_site_bytes, 1 << 30, limits.video_queue_bytes
        )
        self._holdings = Holdings(store, limits, reporter)  # the video thread's only
        self._receipted: OrderedDict[tuple[str, str, str], float] = OrderedDict()
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
            if not live and self._recorded(site, header):
                return
            stream = holdings.open(site, key)
        if header.segment in stream.parts or header.segment <= stream.last:
            if not live:
                self._check_copy(site, header, self._part_sha(site, header))
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
            return
        part = holdings.part(site, h.event_id, h.camera_id, h.segment)
        line = dumps({**asdict(h), "chunk": 0}) + b"\n"
        size = len(line) + len(body)
        if not holdings.reserve(
            site, size, file_charge(size) + (file_charge(1) if h.final else 0)
        ):  # and the FINAL marker
            return
        part.parent.mkdir(parents=True, exist_ok=True)
        write_once(part, line + body)
        if h.final:  # so a clip read back into memory need not open every part
            write_once(part.with_name(FINAL), str(h.segment).encode())
        stream.parts.add(h.segment)
        holdings.charge(site, stream, PART_OVERHEAD)
        if stream.final is not None and stream.parts >= set(range(stream.final + 1)):
            self._write_clip(site, key, stream.final)

    def _write_clip(self, site: str, key: Key, final: int) -> None:
        event, camera, _ = key
        folder = self._store / site / event
        folder.mkdir(parents=True, exist_ok=True)
        parts = [self._holdings.part(site, event, camera, i) for i in range(final + 1)]
        headers = [read_part_header(p) for p in parts]
        part_charge = sum(file_charge(p.stat().st_size) for p in parts) + file_charge(1)
        tmp = folder / f".{camera}.{secrets.token_hex(4)}.tmp"
        digest, size = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    f.readline()
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            os.fsync(out.fileno())
        path = folder / f"{camera}.ts"
        problem = verify_clip(self._store / "keys" / f"{site}.pub", site, event, camera, headers)
        try:
            os.link(tmp, path)  # evidence: never over an existing file
        except FileExistsError:
            if file_sha256(path) != digest.hexdigest():
                self._reporter.report(
                    site,
                    "second_copy",
                    f"clip {event}/{camera}: another "
                    f"copy is already in {path}; kept it, refused this one",
                    logging.ERROR,
                )
                return
        finally:
            tmp.unlink(missing_ok=True)
        verdict = json.dumps(
            {"verified": not problem, "problem": problem, "segments": final + 1}
        ).encode()
        write_once(folder / f"{camera}.verify.json", verdict)
        manifest = [h.sha256 for h in headers]
        self._ledger.add_clip(
            site, event, camera, path, size, digest.hexdigest(), manifest, problem
        )
        shutil.rmtree(parts[0].parent, ignore_errors=True)
        with contextlib.suppress(OSError):  # the event's folder, once no camera is left in it
            parts[0].parent.parent.rmdir()
        self._holdings.drop(site, key)
        self._holdings.used(site, file_charge(size) + file_charge(len(verdict)) - part_charge)
        if problem:
            log.error("clip %s FAILED verification: %s", path, problem)
        else:
            log.info("clip written and verified: %s (%d segments)", path, final + 1)
        self._receipt(site, event, camera)

    def _recorded(self, site: str, header: ChunkHeader) -> bool:
        """True when this clip is in the ledger already: confirm an identical copy again,
        refuse and report a different one."""
        record = self._ledger.clip(site, header.event_id, header.camera_id)
        if record is None:
            return False
        known = record.manifest[header.segment] if header.segment < len(record.manifest) else ""
        self._check_copy(site, header, known)
        return True

    def _check_copy(self, site: str, header: ChunkHeader, known: str) -> None:
        if known != header.sha256:
            self._reporter.report(
                site,
                "second_copy",
                f"clip {header.event_id}/"
                f"{header.camera_id} segment {header.segment} came again with "
                "different content; the first copy is kept",
                logging.ERROR,
            )
        elif header.final:
            self._receipt(site, header.event_id, header.camera_id)

    def _receipt(self, site: str, event: str, camera: str) -> None:
        """Confirm a clip, at most once per RECEIPT_EVERY_S (a box resends chunk by chunk)."""
        now = time.monotonic()
        key = (site, event, camera)
        if now - self._receipted.get(key, -RECEIPT_EVERY_S) < RECEIPT_EVERY_S:
            return
        self._receipted[key] = now
        self._receipted.move_to_end(key)
        while len(self._receipted) > 1024:
            self._receipted.popitem(last=False)
        self._send(Topics(self._prefix, site).receipt, Receipt(clips=((event, camera),)).to_json())

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

    def _part_sha(self, site: str, header: ChunkHeader) -> str:
        path = self._holdings.part(site, header.event_id, header.camera_id, header.segment)
        return read_part_header(path).sha256 if path.exists() else header.sha256
