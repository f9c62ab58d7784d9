"""Segments on disk: written atomically, indexed in SQLite, evicted within a byte budget.

Only two things write video to disk: an alarm clip (pinned to its event until the centre has it)
and continuous recording when it is configured. With recording off, nothing touches the disk
until an alarm.

Choices, each deliberate:
- A file is written atomically (agent/video/segfiles.py) before its index row is committed: a
  crash never leaves a half file under a final name, and a row always points to a whole file.
  Leftovers (temp files, files without a row, rows without a file) are cleaned up by ``open``
  and logged.
- The index (agent/video/segindex.py) is durable: a pin committed for an alarm survives power
  loss. A corrupt index is moved aside and a clean one started; the files it indexed then have
  no row, so ``open`` removes them (and says so): a store that cannot start would stop every
  alarm clip after it.
- "Oldest" is the insertion order, not the wall clock; only retention (recording) has to use
  wall-clock time.
- A pinned segment is never evicted, even over budget: alarm video matters more than the budget.
  Pins are a set of owners (event ids) so two alarms can share a segment.
- The same segment put twice (a clip and the recorder, or two overlapping alarms) is stored once,
  keyed by camera and SHA-256; the second put only adds its pins.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StoreError
from agent.video.segfiles import SEGMENT_SUFFIX, TMP_SUFFIX, file_name, translate, write_atomically
from agent.video.segindex import Kind, RefRow, SegmentIndex
from agent.video.segmenter import Segment

log = logging.getLogger("agent.store")


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """A segment as stored: where it is and what it holds (the uplink reads it from ``path``)."""

    path: Path
    sha256: str
    bytes: int
    start: float
    end: float
    index: int


class SegmentStore:
    """Segment files in ``dir``, indexed in ``db_path``; at most ``budget_bytes`` unpinned.

    ``retention_s`` (continuous recording) also removes unpinned segments that ended longer ago
    than that. One store per directory: ``open`` deletes files in ``dir`` it has no row for.
    """

    def __init__(
        self, dir: Path, db_path: Path, budget_bytes: int, *, retention_s: float | None = None
    ) -> None:
        self.dir = Path(dir)
        self.db_path = Path(db_path)
        self.budget_bytes = budget_bytes
        self.retention_s = retention_s
        # _lock guards _index (sqlite3 connections are not safe to share unguarded), _total and
        # the daily counter. File data is written and fsynced outside it, so one camera's slow
        # write does not hold up another; eviction (a row delete and an unlink) happens inside.
        self._lock = threading.Lock()
        self._index: SegmentIndex | None = None
        self._total = 0
        self._day = ""
        self._written_today = 0
        self._over_budget_logged = False

    # --- life cycle ---------------------------------------------------------------------------

    def open(self) -> SegmentStore:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise translate(exc, f"open the segment store in {self.dir}") from exc
        index = SegmentIndex.open(
            self.db_path, lost=f"the video files in {self.dir} it indexed are removed"
        )
        with self._lock:
            self._index = index
            self._recover()
            self._total = index.total_bytes()
        return self

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None

    def _recover(self) -> None:
        """Removes what a crash can leave behind, and says so."""
        index = self._db()
        temps = [p for p in self.dir.glob(f".*{TMP_SUFFIX}") if p.is_file()]
        for path in temps:
            path.unlink(missing_ok=True)
        rows = index.names()
        gone = [row_id for row_id, name in rows if not (self.dir / name).is_file()]
        index.forget(gone)
        known = {name for _, name in rows}
        orphans = [p for p in self.dir.glob(f"*{SEGMENT_SUFFIX}") if p.name not in known]
        for path in orphans:
            path.unlink(missing_ok=True)
        if temps or gone or orphans:
            log.warning(
                "segment store %s: removed %d unfinished temp file(s), %d index row(s) whose file "
                "was gone and %d file(s) with no index row (left by a crash or power loss)",
                self.dir,
                len(temps),
                len(gone),
                len(orphans),
            )

    # --- writing ------------------------------------------------------------------------------

    def put(
        self, segment: Segment, *, kind: Kind = "spool", pins: Iterable[str] = ()
    ) -> SegmentRef:
        """Stores ``segment`` durably (or finds it stored) and pins it to each of ``pins``.

        Raises StoreError (disk full, read-only, ...) and leaves no partial file behind.
        """
        owners = tuple(pins)
        existing = self._pin_existing(segment, owners)
        if existing is not None:
            return existing
        name = file_name(segment)
        try:
            write_atomically(self.dir, name, segment.data)
        except OSError as exc:
            raise translate(exc, f"write {name}") from exc
        try:
            with self._lock:
                self._db().add(segment, name, kind, owners)
                self._total += len(segment.data)
                self._count_written(len(segment.data))
                self._evict()
        except sqlite3.IntegrityError:  # stored meanwhile by another thread: same file, same name
            existing = self._pin_existing(segment, owners)
            assert existing is not None
            return existing
        except sqlite3.Error as exc:
            raise translate(exc, f"index {name}") from exc
        return SegmentRef(
            self.dir / name,
            segment.sha256,
            len(segment.data),
            segment.start,
            segment.end,
            segment.index,
        )

    def _pin_existing(self, segment: Segment, owners: tuple[str, ...]) -> SegmentRef | None:
        with self._lock:
            index = self._db()
            row = index.find(segment.camera_id, segment.sha256)
            if row is None:
                return None
            index.add_pins(row[0], owners)
            return self._ref(row)

    # --- pins ---------------------------------------------------------------------------------

    def pin(self, path_or_id: Path | str | int, owner: str) -> bool:
        """Keeps the segment until ``unpin(…, owner)``; False if it is no longer stored."""
        with self._lock:
            index = self._db()
            row_id = index.row_id(path_or_id)
            if row_id is None:
                return False
            index.pin(row_id, owner)
            return True

    def unpin(self, path_or_id: Path | str | int, owner: str) -> None:
        """Releases ``owner``'s hold (the centre has the clip); eviction may then take it."""
        with self._lock:
            index = self._db()
            row_id = index.row_id(path_or_id)
            if row_id is not None:
                index.unpin(row_id, owner)
                self._evict()

    def unpin_all(self, owner: str) -> None:
        """Releases every segment ``owner`` holds (an event delivered or given up)."""
        with self._lock:
            self._db().unpin_all(owner)
            self._evict()

    def pins(self, path_or_id: Path | str | int) -> set[str]:
        with self._lock:
            index = self._db()
            return index.owners(index.row_id(path_or_id))

    # --- reading ------------------------------------------------------------------------------

    def refs(self, camera_id: str | None = None, kind: Kind | None = None) -> list[SegmentRef]:
        """Stored segments, oldest first."""
        with self._lock:
            return [self._ref(row) for row in self._db().refs(camera_id, kind)]

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def bytes_written_today(self) -> int:
        """Video bytes written since local midnight (for status: SD-card wear and budget)."""
        with self._lock:
            return self._written_today if self._day == _today() else 0

    # --- eviction (under _lock) ---------------------------------------------------------------

    def _evict(self) -> None:
        """Drops unpinned segments past retention, then the oldest unpinned ones over budget."""
        index = self._db()
        if self.retention_s is not None:
            for row in index.unpinned("end < ?", time.time() - self.retention_s):
                self._delete(*row)
        while self._total > self.budget_bytes:
            batch = index.unpinned("1", limit=32)
            if not batch:
                break
            for row in batch:
                if self._total <= self.budget_bytes:
                    break
                self._delete(*row)
        self._warn_if_over_budget()

    def _delete(self, row_id: int, name: str, size: int) -> None:
        self._db().delete(row_id)
        self._total -= size
        try:
            (self.dir / name).unlink(missing_ok=True)
        except OSError as exc:  # the row is gone; open() removes the file next start
            log.warning("segment store %s: cannot remove %s: %s", self.dir, name, exc.strerror)

    def _warn_if_over_budget(self) -> None:
        over = self._total > self.budget_bytes
        if over and not self._over_budget_logged:
            log.warning(
                "segment store %s: %.1f MB stored, over its %.1f MB budget, because the rest is "
                "pinned by events the centre has not received yet",
                self.dir,
                self._total / 1e6,
                self.budget_bytes / 1e6,
            )
        self._over_budget_logged = over

    # --- helpers (under _lock) ----------------------------------------------------------------

    def _db(self) -> SegmentIndex:
        if self._index is None:
            raise StoreError(f"segment store {self.dir} is not open")
        return self._index

    def _count_written(self, size: int) -> None:
        today = _today()
        if today != self._day:
            self._day, self._written_today = today, 0
        self._written_today += size

    def _ref(self, row: RefRow) -> SegmentRef:
        _, name, sha, size, start, end, index = row
        return SegmentRef(self.dir / name, sha, size, start, end, index)


class Recorder:
    """Continuous recording: a Segmenter sink that stores every segment as ``recording``.

    It runs on the camera thread; a disk error is logged (once until the disk recovers) and the
    camera goes on, because recording must never stop the pre-alarm buffer or the alarms.
    """

    def __init__(self, store: SegmentStore) -> None:
        self._store = store
        self._failing = False

    def __call__(self, segment: Segment) -> None:
        try:
            self._store.put(segment, kind="recording")
        except StoreError as exc:
            if not self._failing:
                log.error("camera %s: recording stopped: %s", segment.camera_id, exc)
            self._failing = True
            return
        if self._failing:
            log.info("camera %s: recording resumed", segment.camera_id)
        self._failing = False


def _today() -> str:
    return time.strftime("%Y-%m-%d")
