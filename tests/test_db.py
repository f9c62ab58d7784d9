"""The one SQLite opener: WAL at the caller's sync level, damage put aside, a busy or
unreachable file never touched."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from agent.db import Sync, open_db, relaxed
from agent.errors import AgentError

SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER NOT NULL); INSERT INTO t VALUES (1);"


def setup(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def open_test(path: Path, **kw: object) -> sqlite3.Connection:
    opened = open_db(path, setup, what="test file", sync=Sync.FULL, lost="its rows", **kw)  # type: ignore[arg-type]
    return opened.conn


def aside(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".corrupt-" in p.name)


def test_a_new_file_is_wal_at_the_callers_sync_level_and_private(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "t.db"
    opened = open_db(db, setup, what="test file", sync=Sync.NORMAL, lost="", private=True)
    conn = opened.conn
    assert opened.quarantined is None
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert os.stat(db).st_mode & 0o777 == 0o600
    with conn:  # the caller's transactions work as sqlite3's default
        conn.execute("INSERT INTO t VALUES (2)")
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (2,)


@pytest.mark.parametrize(
    "content", [b"not a database at all " * 200, b""], ids=["garbage", "empty"]
)
def test_a_corrupt_file_is_moved_aside_with_the_reason_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    db = tmp_path / "t.db"
    db.write_bytes(content)
    with caplog.at_level(logging.ERROR, "agent.db"):
        opened = open_db(db, setup, what="test file", sync=Sync.FULL, lost="its rows are lost")
    assert opened.quarantined is not None and opened.quarantined.read_bytes() == content
    assert aside(tmp_path) == [opened.quarantined.name]
    [record] = [r for r in caplog.records if r.name == "agent.db"]
    assert "test file" in record.message and "is corrupt" in record.message
    assert ("empty" if not content else "not a database") in record.message
    assert "its rows are lost" in record.message and "started a clean one" in record.message
    assert opened.conn.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)


def test_a_file_of_another_kind_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE t (name TEXT, other TEXT)")  # no column x: setup fails on it
    other.commit()
    other.close()
    conn = open_test(db)
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert len(aside(tmp_path)) == 1


def test_a_busy_file_is_left_alone(tmp_path: Path) -> None:
    """A second agent on the same storage must not move the first one's file from under it."""
    db = tmp_path / "t.db"
    open_test(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the other process is writing
    try:
        with pytest.raises(AgentError, match="in use by another process"):
            open_test(db, busy_timeout_s=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert aside(tmp_path) == []
    assert open_test(db).execute("SELECT COUNT(*) FROM t").fetchone() == (2,)


def test_without_quarantine_a_corrupt_file_stays_and_the_open_fails(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    db.write_bytes(b"garbage" * 1000)
    with pytest.raises(AgentError, match=r"is corrupt .* left in place"):
        open_test(db, quarantine=False)
    assert aside(tmp_path) == [] and db.read_bytes() == b"garbage" * 1000


def test_a_reader_takes_an_empty_file_for_one_being_created(tmp_path: Path) -> None:
    """Another process has just created the file and not yet written its header."""
    db = tmp_path / "t.db"
    db.touch()
    assert open_test(db, quarantine=False).execute("SELECT x FROM t").fetchall() == [(1,)]
    assert aside(tmp_path) == []


def test_the_callers_error_type_is_raised(tmp_path: Path) -> None:
    class MineError(AgentError):
        pass

    (tmp_path / "t.db").mkdir()  # a directory where the file should be
    with pytest.raises(MineError, match="test file"):
        open_test(tmp_path / "t.db", error=MineError)
    assert aside(tmp_path) == []  # a file that cannot be opened is no damage to put aside


def test_relaxed_lowers_the_sync_level_for_one_transaction(tmp_path: Path) -> None:
    conn = open_test(tmp_path / "t.db")
    with relaxed(conn), conn:
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)
        conn.execute("INSERT INTO t VALUES (2)")
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again
