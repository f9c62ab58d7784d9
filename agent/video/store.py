"""Segments on disk: written atomically, indexed in SQLite, evicted within a byte budget.

Only two things write video to disk: an alarm clip (pinned to its event until the centre has it)
and continuous recording when it is configured. With recording off, nothing touches the disk
until an alarm.

Choices, each deliberate:
- A file is written under a temporary name in the same directory, fsynced, renamed, and the
  directory fsynced, before its index row is committed: a crash never leaves a half file under a
  final name, and a row always points to a whole file. Leftovers (temp files, files without a
  row, rows without a file) are cleaned up by ``open`` and logged.
- SQLite in WAL with ``synchronous=FULL`` (opened by agent/db.py): a pin committed for an
  alarm survives power loss. A corrupt index is moved aside and a clean one started; the files
  it indexed then have no row, so ``open`` removes them (and says so): a store that cannot
  start would stop every alarm clip after it.
- "Oldest" is the insertion order (AUTOINCREMENT id), not the wall clock, which jumps on a Pi at
  NTP sync; only retention (recording) has to use wall-clock time.
- A pinned segment is never evicted, even over budget: alarm video matters more than the budget.
  Pins are a set of owners (event ids) so two alarms can share a segment.
- The same segment put twice (a clip and the recorder, or two overlapping alarms) is stored once,
  keyed by camera and SHA-256; the second put only adds its pins.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.db import Sync, open_db
from agent.errors import AgentError
from agent.video.segmenter import Segment

log = logging.getLogger("agent.store")

Kind = Literal["spool", "recording"]

_SCHEMA = """
PRAGMA foreign_keys=ON;
CREATE TABLE IF NOT EXISTS segments (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order = eviction order
    camera  TEXT    NOT NULL,
    idx     INTEGER NOT NULL,                   -- Segment.index: per camera, per agent run
    start   REAL    NOT NULL,                   -- wall clock
    end     REAL    NOT NULL,
    bytes   INTEGER NOT NULL,
    sha256  TEXT    NOT NULL,
    path    TEXT    NOT NULL UNIQUE,            -- file name inside the store directory
    kind    TEXT    NOT NULL CHECK (kind IN ('spool', 'recording')),
    UNIQUE (camera, sha256)
);
CREATE INDEX IF NOT EXISTS segments_end ON segments (end);  -- retention
CREATE TABLE IF NOT EXISTS pins (
    segment INTEGER NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    owner   TEXT    NOT NULL,                   -- an event id, usually
    PRIMARY KEY (segment, owner)
);
"""

_TMP_SUFFIX = ".tmp"
_SEGMENT_SUFFIX = ".ts"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class StoreError(AgentError, OSError):
    """The segment store could not write or index video; the message says what to do."""


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
        # _lock guards _conn (sqlite3 connections are not safe to share unguarded), _total and
        # the daily counter. File data is written and fsynced outside it, so one camera's slow
        # write does not hold up another; eviction (a row delete and an unlink) happens inside.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._total = 0
        self._day = ""
        self._written_today = 0
        self._over_budget_logged = False

    # --- life cycle ---------------------------------------------------------------------------

    def open(self) -> SegmentStore:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _translate(exc, f"open the segment store in {self.dir}") from exc
        conn = open_db(
            self.db_path,
            _setup,
            what="segment index",
            sync=Sync.FULL,
            lost=f"the video files in {self.dir} it indexed are removed",
            error=StoreError,
        ).conn
        with self._lock:
            self._conn = conn
            self._recover()
            self._total = self._sum_bytes()
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _recover(self) -> None:
        """Removes what a crash can leave behind, and says so."""
        conn = self._db()
        temps = [p for p in self.dir.glob(f".*{_TMP_SUFFIX}") if p.is_file()]
        for path in temps:
            path.unlink(missing_ok=True)
        rows = conn.execute("SELECT id, path FROM segments").fetchall()
        gone = [row_id for row_id, name in rows if not (self.dir / name).is_file()]
        with conn:
            conn.executemany("DELETE FROM segments WHERE id = ?", [(i,) for i in gone])
        known = {name for _, name in rows}
        orphans = [p for p in self.dir.glob(f"*{_SEGMENT_SUFFIX}") if p.name not in known]
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
        name = _file_name(segment)
        self._write_file(name, segment.data)
        try:
            with self._lock:
                ref = self._insert(segment, name, kind, owners)
                self._count_written(len(segment.data))
                self._evict()
        except sqlite3.IntegrityError:  # stored meanwhile by another thread: same file, same name
            existing = self._pin_existing(segment, owners)
            assert existing is not None
            return existing
        except sqlite3.Error as exc:
            raise _translate(exc, f"index {name}") from exc
        return ref

    def _pin_existing(self, segment: Segment, owners: tuple[str, ...]) -> SegmentRef | None:
        with self._lock:
            conn = self._db()
            row = conn.execute(
                f"SELECT {_REF_COLUMNS} FROM segments WHERE camera = ? AND sha256 = ?",
                (segment.camera_id, segment.sha256),
            ).fetchone()
            if row is None:
                return None
            try:
                with conn:
                    conn.executemany(
                        "INSERT OR IGNORE INTO pins (segment, owner) VALUES (?, ?)",
                        [(row[0], owner) for owner in owners],
                    )
            except sqlite3.Error as exc:
                raise _translate(exc, "pin a segment") from exc
            return self._ref(row)

    def _write_file(self, name: str, data: bytes) -> None:
        final = self.dir / name
        tmp = self.dir / f".{name}.{os.getpid()}.{threading.get_ident()}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(self.dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise _translate(exc, f"write {name}") from exc

    def _insert(
        self, segment: Segment, name: str, kind: Kind, owners: tuple[str, ...]
    ) -> SegmentRef:
        conn = self._db()
        with conn:
            cur = conn.execute(
                "INSERT INTO segments (camera, idx, start, end, bytes, sha256, path, kind) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    segment.camera_id,
                    segment.index,
                    segment.start,
                    segment.end,
                    len(segment.data),
                    segment.sha256,
                    name,
                    kind,
                ),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO pins (segment, owner) VALUES (?, ?)",
                [(cur.lastrowid, owner) for owner in owners],
            )
        self._total += len(segment.data)
        return SegmentRef(
            self.dir / name,
            segment.sha256,
            len(segment.data),
            segment.start,
            segment.end,
            segment.index,
        )

    # --- pins ---------------------------------------------------------------------------------

    def pin(self, path_or_id: Path | str | int, owner: str) -> bool:
        """Keeps the segment until ``unpin(…, owner)``; False if it is no longer stored."""
        with self._lock:
            row_id = self._row_id(path_or_id)
            if row_id is None:
                return False
            self._execute(
                "INSERT OR IGNORE INTO pins (segment, owner) VALUES (?, ?)", row_id, owner
            )
            return True

    def unpin(self, path_or_id: Path | str | int, owner: str) -> None:
        """Releases ``owner``'s hold (the centre has the clip); eviction may then take it."""
        with self._lock:
            row_id = self._row_id(path_or_id)
            if row_id is not None:
                self._execute("DELETE FROM pins WHERE segment = ? AND owner = ?", row_id, owner)
                self._evict()

    def unpin_all(self, owner: str) -> None:
        """Releases every segment ``owner`` holds (an event delivered or given up)."""
        with self._lock:
            self._execute("DELETE FROM pins WHERE owner = ?", owner)
            self._evict()

    def pins(self, path_or_id: Path | str | int) -> set[str]:
        with self._lock:
            rows = self._db().execute(
                "SELECT owner FROM pins WHERE segment = ?", (self._row_id(path_or_id),)
            )
            return {owner for (owner,) in rows}

    # --- reading ------------------------------------------------------------------------------

    def refs(self, camera_id: str | None = None, kind: Kind | None = None) -> list[SegmentRef]:
        """Stored segments, oldest first."""
        query = f"SELECT {_REF_COLUMNS} FROM segments WHERE 1"
        args: list[str] = []
        if camera_id is not None:
            query, args = query + " AND camera = ?", [*args, camera_id]
        if kind is not None:
            query, args = query + " AND kind = ?", [*args, kind]
        with self._lock:
            return [self._ref(row) for row in self._db().execute(query + " ORDER BY id", args)]

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
        if self.retention_s is not None:
            for row in self._unpinned("end < ?", time.time() - self.retention_s):
                self._delete(*row)
        while self._total > self.budget_bytes:
            batch = self._unpinned("1", limit=32)
            if not batch:
                break
            for row in batch:
                if self._total <= self.budget_bytes:
                    break
                self._delete(*row)
        self._warn_if_over_budget()

    def _unpinned(self, where: str, *args: object, limit: int = -1) -> list[tuple[int, str, int]]:
        return (
            self._db()
            .execute(
                f"SELECT id, path, bytes FROM segments WHERE {where} "
                "AND id NOT IN (SELECT segment FROM pins) ORDER BY id LIMIT ?",
                (*args, limit),
            )
            .fetchall()
        )

    def _delete(self, row_id: int, name: str, size: int) -> None:
        self._execute("DELETE FROM segments WHERE id = ?", row_id)
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

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"segment store {self.dir} is not open")
        return self._conn

    def _execute(self, sql: str, *args: object) -> None:
        conn = self._db()
        try:
            with conn:
                conn.execute(sql, args)
        except sqlite3.Error as exc:
            raise _translate(exc, "update the segment index") from exc

    def _row_id(self, path_or_id: Path | str | int) -> int | None:
        key: int | str = path_or_id if isinstance(path_or_id, int) else Path(path_or_id).name
        column = "id" if isinstance(key, int) else "path"
        row = self._db().execute(f"SELECT id FROM segments WHERE {column} = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _sum_bytes(self) -> int:
        (total,) = self._db().execute("SELECT COALESCE(SUM(bytes), 0) FROM segments").fetchone()
        return int(total)

    def _count_written(self, size: int) -> None:
        today = _today()
        if today != self._day:
            self._day, self._written_today = today, 0
        self._written_today += size

    def _ref(self, row: tuple[int, str, str, int, float, float, int]) -> SegmentRef:
        _, name, sha, size, start, end, index = row
        return SegmentRef(self.dir / name, sha, size, start, end, index)


_REF_COLUMNS = "id, path, sha256, bytes, start, end, idx"


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


def _setup(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)


def _file_name(segment: Segment) -> str:
    """Sorts by camera then time, and is the same for the same segment (see put's race)."""
    stamp = datetime.datetime.fromtimestamp(segment.start, datetime.UTC)
    camera = _UNSAFE.sub("_", segment.camera_id)
    when = stamp.strftime("%Y%m%dT%H%M%S.%f")[:-3]
    return f"{camera}_{when}Z_{segment.sha256[:16]}{_SEGMENT_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _today() -> str:
    return time.strftime("%Y-%m-%d")


_ADVICE = {
    errno.ENOSPC: "the disk is full; free space or lower storage.max_gb / recording.max_gb",
    errno.EDQUOT: "the disk quota is used up; raise it or lower storage.max_gb",
    errno.EROFS: "the file system is read-only (an SD card does this when it is failing); "
    "check `dmesg` and replace the card",
    errno.EACCES: "permission denied; the agent's user must own the storage directory",
}


def _translate(exc: OSError | sqlite3.Error, action: str) -> StoreError:
    if isinstance(exc, OSError):
        advice = _ADVICE.get(exc.errno or 0, exc.strerror or str(exc))
        err = StoreError(exc.errno or 0, f"cannot {action}: {advice}")
    else:
        text = str(exc)
        full = "full" in text
        code = errno.ENOSPC if full else errno.EROFS if "readonly" in text else errno.EIO
        err = StoreError(code, f"cannot {action}: {_ADVICE.get(code, text)}")
    return err
