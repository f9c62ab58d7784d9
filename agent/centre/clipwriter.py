"""A clip's verified segments to its evidence file, on the centre's ``video`` thread.

Each verified segment is kept on disk as a part (``{site}/.partial/{event}/{camera}/``, the
header line and the bytes); once a clip's parts are all in, :class:`ClipWriter` writes the clip,
verifies its hash chain and the box's signature, records it in the ledger and confirms it to
the box (at most once per RECEIPT_EVERY_S: a box resends chunk by chunk).

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
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from agent.centre.evidence import (
    file_charge,
    file_sha256,
    read_part_header,
    verify_clip,
    write_once,
)
from agent.centre.holdings import FINAL, PART_OVERHEAD, Holdings, Key, Stream
from agent.centre.intake import Reporter
from agent.centre.ledgerstore import LedgerStore
from agent.delivery.protocol import ChunkHeader, Receipt, Topics, dumps

log = logging.getLogger("agent.centre")

RECEIPT_EVERY_S = 5.0

Send = Callable[[str, bytes], None]  # publish (topic, payload) on the video link


class ClipReceipts:
    """Confirms a clip to its box, at most once per RECEIPT_EVERY_S (a box resends chunk by
    chunk, and each resent final chunk asks again)."""

    def __init__(self, prefix: str, send: Send) -> None:
        self._prefix, self._send = prefix, send
        self._sent: OrderedDict[tuple[str, str, str], float] = OrderedDict()  # the newest 1024

    def confirm(self, site: str, event: str, camera: str) -> None:
        now = time.monotonic()
        key = (site, event, camera)
        if now - self._sent.get(key, -RECEIPT_EVERY_S) < RECEIPT_EVERY_S:
            return
        self._sent[key] = now
        self._sent.move_to_end(key)
        while len(self._sent) > 1024:
            self._sent.popitem(last=False)
        self._send(Topics(self._prefix, site).receipt, Receipt(clips=((event, camera),)).to_json())


class ClipWriter:
    """The clips of the ``video`` thread (only): their parts, files, ledger rows and receipts."""

    def __init__(
        self,
        holdings: Holdings,
        store: Path,
        ledger: LedgerStore,
        reporter: Reporter,
        receipts: ClipReceipts,
    ) -> None:
        self._holdings, self._store, self._ledger = holdings, store, ledger
        self._reporter, self._receipts = reporter, receipts

    def add_part(self, site: str, key: Key, stream: Stream, h: ChunkHeader, body: bytes) -> None:
        """Keep a verified segment of a clip on disk; write the clip once it is complete."""
        holdings = self._holdings
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

    def recorded(self, site: str, header: ChunkHeader) -> bool:
        """True when this clip is in the ledger already: confirm an identical copy again,
        refuse and report a different one."""
        record = self._ledger.clip(site, header.event_id, header.camera_id)
        if record is None:
            return False
        known = record.manifest[header.segment] if header.segment < len(record.manifest) else ""
        self._check_copy(site, header, known)
        return True

    def seen_again(self, site: str, header: ChunkHeader) -> None:
        """A segment of a clip in memory that is on disk already: compare it with its part."""
        path = self._holdings.part(site, header.event_id, header.camera_id, header.segment)
        self._check_copy(
            site, header, read_part_header(path).sha256 if path.exists() else header.sha256
        )

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
        self._receipts.confirm(site, event, camera)

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
            self._receipts.confirm(site, header.event_id, header.camera_id)
