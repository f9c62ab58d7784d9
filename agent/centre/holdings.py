"""What the centre's video thread holds for each site, and the bounds on it.

Used only on the ``video`` thread (agent/centre/assembler.py and clipwriter.py), so nothing
here needs a lock. The bounds are ``Limits`` (agent/centre/intake.py); each is kept by eviction
or refusal, and reported:

- memory: every chunk held (its bytes and CHUNK_OVERHEAD) and every verified segment a clip in
  memory knows of (PART_OVERHEAD) is charged to its stream, its site and the total. Over the
  site's share, the site's least recently used stream is dropped; over the total, that of the
  site holding the most. Dropping a clip loses only its incomplete segments: its verified
  segments are on disk and :meth:`Holdings.open` reads them back;
- open clips and live sessions per site: the least recently used of the kind is dropped; live
  sessions also after ``live_idle_s`` without a chunk;
- disk: what a site's folder holds counts against its quota (scanned once, then kept up to date),
  and video stops where the free space is down to the reserve kept for alarms; the partial
  segments of a clip that never completes are removed after ``partial_ttl_s``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from agent.centre.evidence import disk_charge
from agent.centre.intake import Limits, Reporter
from agent.delivery.protocol import ChunkHeader

PARTIAL = ".partial"  # {site}/.partial/{event}/{camera}/{segment:05d}.seg: verified segments
FINAL = "final"  # in a partial clip's folder: the number of its final segment
CHUNK_OVERHEAD = 256  # bytes of bookkeeping charged for each chunk held in memory
PART_OVERHEAD = 64  # and for each verified segment a clip in memory knows of
EXPIRE_S = 3600.0  # how often partial clips are looked at for expiry

Key = tuple[str, str, str]  # (event or session, camera, "clip" | "live")


@dataclass
class Segment:
    """A segment whose chunks are arriving."""

    header: ChunkHeader
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Stream:
    """One clip (``parts``: its verified segments on disk) or one live session (``last``: the
    last segment appended)."""

    parts: set[int] = field(default_factory=set)
    final: int | None = None
    last: int = -1
    assembling: dict[int, Segment] = field(default_factory=dict)
    held: int = 0
    touched: float = field(default_factory=time.monotonic)


@dataclass
class Site:
    streams: OrderedDict[Key, Stream] = field(default_factory=OrderedDict)  # least recent first
    held: int = 0  # bytes charged for memory
    usage: int | None = None  # bytes charged on disk; None until scanned


class Holdings:
    def __init__(self, store: Path, limits: Limits, reporter: Reporter) -> None:
        self._store, self._limits, self._reporter = store, limits, reporter
        self.sites: dict[str, Site] = {}
        self.held = 0  # bytes charged for memory, all sites
        self._expired = -EXPIRE_S

    def part(self, site: str, event: str, camera: str, segment: int) -> Path:
        return self._store / site / PARTIAL / event / camera / f"{segment:05d}.seg"

    def open(self, site: str, key: Key) -> Stream:
        """A stream starts, or comes back into memory with its verified parts read from disk."""
        state = self.sites.setdefault(site, Site())
        same_kind = [k for k in state.streams if k[2] == key[2]]
        live = key[2] == "live"
        cap = self._limits.live_sessions_site if live else self._limits.open_clips_site
        if len(same_kind) >= cap:
            self.evict(site, same_kind[0], f"more than {cap} open at once")
        stream = Stream()
        folder = self.part(site, key[0], key[1], 0).parent
        if not live and folder.is_dir():
            stream.parts = {int(p.stem) for p in folder.glob("*.seg") if p.stem.isdigit()}
            if (folder / FINAL).exists():
                stream.final = int((folder / FINAL).read_text())
        state.streams[key] = stream
        self.charge(site, stream, PART_OVERHEAD * len(stream.parts))
        return stream

    def touch(self, site: str, key: Key) -> Stream | None:
        """The stream, now the site's most recently used; None if it is not in memory."""
        state = self.sites.setdefault(site, Site())
        stream = state.streams.get(key)
        if stream is not None:
            state.streams.move_to_end(key)
            stream.touched = time.monotonic()
        return stream

    def make_room(self, site: str, keep: Key, n: int) -> None:
        """Evict least recently used streams until ``n`` more bytes fit, first in the site's
        share, then in the total (taken from the site that holds the most)."""
        limits, state = self._limits, self.sites[site]
        while state.held + n > limits.assembly_site_bytes and state.streams:
            victim = next(iter(state.streams))
            self.evict(
                site, victim, f"its {limits.assembly_site_bytes} bytes of assembly memory were full"
            )
            if victim == keep:
                break
        while self.held + n > limits.assembly_bytes:
            hog_site, hog = max(self.sites.items(), key=lambda kv: kv[1].held)
            if not hog.streams:
                break
            self.evict(
                hog_site,
                next(iter(hog.streams)),
                f"the centre's {limits.assembly_bytes} bytes of assembly memory were full",
            )

    def evict(self, site: str, key: Key, why: str) -> None:
        self._reporter.report(
            site,
            "evicted",
            f"{key[2]} {key[0]}/{key[1]} dropped from memory (incomplete segments lost): {why}",
        )
        self.drop(site, key)

    def drop(self, site: str, key: Key) -> None:
        stream = self.sites[site].streams.pop(key, None)
        if stream is not None:
            self.charge(site, stream, -stream.held)

    def charge(self, site: str, stream: Stream, n: int) -> None:
        stream.held += n
        self.sites[site].held += n
        self.held += n

    def reserve(self, site: str, n: int, cost: int) -> bool:
        """Room on disk for ``n`` more bytes of this site's video, counted as ``cost`` against
        its quota? Else report and refuse."""
        state = self.sites.setdefault(site, Site())
        if state.usage is None:
            state.usage = disk_charge(self._store / site)
        if state.usage + cost > self._limits.site_quota_bytes:
            self._reporter.report(
                site,
                "over_quota",
                f"the site's video is over its quota of "
                f"{self._limits.site_quota_bytes} bytes; video refused: move "
                "old clips to the archive or raise --site-quota-gb",
                logging.ERROR,
            )
            return False
        if shutil.disk_usage(self._store).free - n < self._limits.min_free_bytes:
            self._reporter.report(
                site,
                "disk_reserve",
                "free space is down to the reserve kept for alarms; video refused",
                logging.ERROR,
            )
            return False
        state.usage += cost
        return True

    def used(self, site: str, delta: int) -> None:
        """Files of the site were added or removed outside :meth:`reserve`."""
        state = self.sites.setdefault(site, Site())
        if state.usage is not None:
            state.usage += delta

    def sweep(self, now: float | None = None) -> None:
        """End idle live sessions; hourly, remove partial clips older than partial_ttl_s."""
        now = time.monotonic() if now is None else now
        for site, state in self.sites.items():
            for key, stream in list(state.streams.items()):
                if key[2] == "live" and now - stream.touched > self._limits.live_idle_s:
                    self.drop(site, key)
        if now - self._expired < EXPIRE_S:
            return
        self._expired = now
        cutoff = time.time() - self._limits.partial_ttl_s
        for folder in self._store.glob(f"*/{PARTIAL}/*/*"):
            if folder.stat().st_mtime < cutoff:
                site, event, camera = folder.parts[-4], folder.parts[-2], folder.parts[-1]
                shutil.rmtree(folder, ignore_errors=True)
                if site in self.sites:
                    self.drop(site, (event, camera, "clip"))
                    self.sites[site].usage = None
                self._reporter.report(
                    site,
                    "expired",
                    f"clip {event}/{camera} never completed; its partial segments were removed",
                )
