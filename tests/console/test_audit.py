"""The audit log: append-only in the database, and any change behind its back is found."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.centre.console import accounts, audit
from agent.centre.console.database import Database, SqliteDatabase


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return SqliteDatabase.open(tmp_path)


def test_the_chain_verifies_and_refuses_update_and_delete(db: Database, tmp_path: Path) -> None:
    for i in range(5):
        audit.record(db, "ivanov", "ack", "school-1", f"event-{i}", {"reason": "наряд"})
    verdict = audit.verify(db)
    assert verdict.ok and verdict.entries == 5, verdict
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), db.tx() as conn:
        conn.execute("UPDATE audit SET actor = 'petrov' WHERE id = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), db.tx() as conn:
        conn.execute("DELETE FROM audit WHERE id = 5")
    assert audit.verify(db).ok


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ('UPDATE audit SET detail = \'{"reason":"ложный"}\' WHERE id = 3', "entry 3 was altered"),
        ("DELETE FROM audit WHERE id = 2", "entry 2 is missing"),
    ],
)
def test_a_change_behind_the_databases_back_is_named(
    db: Database, tmp_path: Path, tamper: str, problem: str
) -> None:
    for i in range(4):
        audit.record(db, "ivanov", "ack", "school-1", f"event-{i}", {"reason": "наряд"})
    db.close()
    raw = sqlite3.connect(tmp_path / "console.db")  # someone with the file, not the console
    raw.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
    raw.execute(tamper)
    raw.commit()
    raw.close()
    verdict = audit.verify(SqliteDatabase.open(tmp_path))
    assert not verdict.ok and verdict.problem.startswith(problem), verdict


def test_logins_are_audited_and_a_guessed_name_locks(db: Database) -> None:
    accounts.add_user(db, "ivanov", "operator", "a-long-password", "test")
    assert accounts.login(db, "ivanov", "a-long-password", "10.0.0.1", now=1000.0) is not None
    for _ in range(accounts.LOCK_AFTER):
        assert accounts.login(db, "ivanov", "wrong-password", "10.0.0.9", now=1001.0) is None
    assert accounts.login(db, "ivanov", "a-long-password", "10.0.0.1", now=1002.0) is None
    later = 1002.0 + accounts.LOCK_S
    got = accounts.login(db, "ivanov", "a-long-password", "10.0.0.1", now=later)
    assert got is not None
    token, who = got
    assert accounts.session(db, token, now=later) == who
    assert accounts.session(db, token, now=later + accounts.IDLE_S + 1) is None
    actions = [e.action for e in audit.entries(db)]
    assert actions == ["user_added", "login"] + ["login_failed"] * 5 + ["login_locked", "login"]
    assert audit.verify(db).ok
