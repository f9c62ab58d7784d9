"""The segment store's index: a SQLite row for each stored segment file, and who pins it.

SQLite in WAL with ``synchronous=FULL`` (opened by agent/db.py): a pin committed for an alarm
survives power loss. "Oldest" is the insertion order (AUTOINCREMENT id), not the wall clock,
which jumps on a Pi at NTP sync; only retention (recording) has to use wall-clock time. The same
segment is one row, keyed by camera and SHA-256; pins are a set of owners (event ids), so two
alarms can share a segment, and a row's pins go with it.

No lock of its own: agent/video/store.py calls it under the store's lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from agent.db import Sync, open_db
from agent.errors import StoreError
from agent.video.segfiles import translate
from agent.video.segmenter import Segment

Kind = Literal["spool", "recording"]
RefRow = tuple[int, str, str, int, float, float, int]  # id, path, sha256, bytes, start, end, idx

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

_REF_COLUMNS = "id, path, sha256, bytes, start, end, idx"


class SegmentIndex:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path, lost: str) -> SegmentIndex:
        """The index at ``path``; a corrupt one is moved aside (``lost`` says what that costs)."""
        return cls(
            open_db(
                path, _setup, what="segment index", sync=Sync.FULL, lost=lost, error=StoreError
            ).conn
        )

    def close(self) -> None:
        self._conn.close()

    # --- rows -----------------------------------------------------------------------------

    def names(self) -> list[tuple[int, str]]:
        """Every row's id and file name."""
        return self._conn.execute("SELECT id, path FROM segments").fetchall()

    def forget(self, row_ids: list[int]) -> None:
        """Drop the rows of files that are gone, in one transaction."""
        with self._conn:
            self._conn.executemany("DELETE FROM segments WHERE id = ?", [(i,) for i in row_ids])

    def find(self, camera: str, sha256: str) -> RefRow | None:
        row: RefRow | None = self._conn.execute(
            f"SELECT {_REF_COLUMNS} FROM segments WHERE camera = ? AND sha256 = ?",
            (camera, sha256),
        ).fetchone()
        return row

    def add(self, segment: Segment, name: str, kind: Kind, owners: tuple[str, ...]) -> None:
        """A new row and its pins, in one transaction. sqlite3.IntegrityError: the segment was
        stored meanwhile (by another thread)."""
        with self._conn:
            cur = self._conn.execute(
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
            self._conn.executemany(
                "INSERT OR IGNORE INTO pins (segment, owner) VALUES (?, ?)",
                [(cur.lastrowid, owner) for owner in owners],
            )

    def delete(self, row_id: int) -> None:
        self._execute("DELETE FROM segments WHERE id = ?", row_id)

    def row_id(self, path_or_id: Path | str | int) -> int | None:
        key: int | str = path_or_id if isinstance(path_or_id, int) else Path(path_or_id).name
        column = "id" if isinstance(key, int) else "path"
        row = self._conn.execute(f"SELECT id FROM segments WHERE {column} = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def refs(self, camera_id: str | None, kind: Kind | None) -> list[RefRow]:
        """The rows (of a camera, of a kind), oldest first."""
        query = f"SELECT {_REF_COLUMNS} FROM segments WHERE 1"
        args: list[str] = []
        if camera_id is not None:
            query, args = query + " AND camera = ?", [*args, camera_id]
        if kind is not None:
            query, args = query + " AND kind = ?", [*args, kind]
        return self._conn.execute(query + " ORDER BY id", args).fetchall()

    def total_bytes(self) -> int:
        (total,) = self._conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM segments").fetchone()
        return int(total)

    def unpinned(self, where: str, *args: object, limit: int = -1) -> list[tuple[int, str, int]]:
        """Id, file name and size of the unpinned rows that match ``where``, oldest first."""
        return self._conn.execute(
            f"SELECT id, path, bytes FROM segments WHERE {where} "
            "AND id NOT IN (SELECT segment FROM pins) ORDER BY id LIMIT ?",
            (*args, limit),
        ).fetchall()

    # --- pins -----------------------------------------------------------------------------

    def add_pins(self, row_id: int, owners: Iterable[str]) -> None:
        try:
            with self._conn:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO pins (segment, owner) VALUES (?, ?)",
                    [(row_id, owner) for owner in owners],
                )
        except sqlite3.Error as exc:
            raise translate(exc, "pin a segment") from exc

    def pin(self, row_id: int, owner: str) -> None:
        self._execute("INSERT OR IGNORE INTO pins (segment, owner) VALUES (?, ?)", row_id, owner)

    def unpin(self, row_id: int, owner: str) -> None:
        self._execute("DELETE FROM pins WHERE segment = ? AND owner = ?", row_id, owner)

    def unpin_all(self, owner: str) -> None:
        self._execute("DELETE FROM pins WHERE owner = ?", owner)

    def owners(self, row_id: int | None) -> set[str]:
        rows = self._conn.execute("SELECT owner FROM pins WHERE segment = ?", (row_id,))
        return {owner for (owner,) in rows}

    def _execute(self, sql: str, *args: object) -> None:
        try:
            with self._conn:
                self._conn.execute(sql, args)
        except sqlite3.Error as exc:
            raise translate(exc, "update the segment index") from exc


def _setup(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
