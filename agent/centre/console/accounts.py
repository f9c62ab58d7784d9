"""Officers, roles and sessions.

Roles: ``operator`` (view, acknowledge, close, live view) and ``supervisor`` (also fetch, test
mode, users, the audit log). A session is a random 256-bit token in a cookie (``HttpOnly``,
``Secure``, ``SameSite=Strict``); the database keeps only its sha256, so reading the table logs
no one in. Each session has its own CSRF token, which the page sends back in a header with every
change. Five failed logins of one name within 15 minutes lock that name for 15 minutes (an
officer's colleague, not a bot, is the likely guesser; the lock is audited).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from agent.centre.console import audit
from agent.centre.console.database import Database
from agent.centre.console.passwords import (
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    check_password,
    hash_password,
    needs_rehash,
)
from agent.clock import rfc3339
from agent.errors import AgentError

ROLES = ("operator", "supervisor")
USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
IDLE_S = 12 * 3600.0  # a shift
MAX_AGE_S = 24 * 3600.0
LOCK_AFTER = 5
LOCK_S = 15 * 60.0
_DUMMY = hash_password(secrets.token_hex(8))  # an unknown name costs the same scrypt as a known


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    role: str
    csrf: str

    @property
    def supervisor(self) -> bool:
        return self.role == "supervisor"


class AccountError(AgentError, ValueError):
    """A user cannot be added as asked; the message says why."""


def add_user(db: Database, name: str, role: str, password: str, actor: str) -> None:
    if not USER_NAME.fullmatch(name):
        raise AccountError(
            f"a user name is 1 to 32 of a-z 0-9 . _ - starting with a letter or digit, not {name!r}"
        )
    if role not in ROLES:
        raise AccountError(f"the role is operator or supervisor, not {role!r}")
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AccountError(
            f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )
    hashed = hash_password(password)
    with db.tx() as conn:
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise AccountError(f"user {name} exists already")
        conn.execute(
            "INSERT INTO users VALUES (?, ?, ?, ?, 0)", (name, role, hashed, rfc3339(time.time()))
        )
        audit.append(conn, actor, "user_added", target=name, detail={"role": role})


def users(db: Database) -> list[tuple[str, str, str, bool]]:
    """(name, role, created_at, disabled) of every user."""
    return [
        (str(a), str(b), str(c), bool(d))
        for a, b, c, d in db.rows(
            "SELECT name, role, created_at, disabled FROM users ORDER BY name"
        )
    ]


def login(
    db: Database, name: str, password: str, client: str, now: float | None = None
) -> tuple[str, Session] | None:
    """A new session's cookie token and the session, or None (audited either way)."""
    now = time.time() if now is None else now
    row = db.row("SELECT role, password, disabled FROM users WHERE name = ?", (name,))
    ok = check_password(password, str(row[1]) if row else _DUMMY) and row is not None
    with db.tx() as conn:
        (failures,) = conn.execute(
            "SELECT COUNT(*) FROM logins WHERE officer = ? AND at > ?", (name, now - LOCK_S)
        ).fetchone()
        who = name if row is not None else "?"
        if failures >= LOCK_AFTER:
            audit.append(conn, who, "login_locked", detail={"client": client}, now=now)
            return None
        if not ok or row is None or row[2]:
            conn.execute("INSERT INTO logins VALUES (?, ?)", (name, now))
            audit.append(conn, who, "login_failed", detail={"client": client}, now=now)
            return None
        conn.execute("DELETE FROM logins WHERE officer = ?", (name,))
        if needs_rehash(str(row[1])):
            conn.execute(
                "UPDATE users SET password = ? WHERE name = ?", (hash_password(password), name)
            )
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        conn.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (_digest(token), name, csrf, now, now)
        )
        conn.execute(
            "DELETE FROM sessions WHERE seen < ? OR created < ?", (now - IDLE_S, now - MAX_AGE_S)
        )
        audit.append(conn, name, "login", detail={"client": client}, now=now)
    return token, Session(name, str(row[0]), csrf)


def session(db: Database, token: str, now: float | None = None) -> Session | None:
    """The session of a cookie token, if it is live and its user is not disabled."""
    if not token or len(token) > 64:
        return None
    now = time.time() if now is None else now
    digest = _digest(token)
    row = db.row(
        "SELECT s.officer, u.role, s.csrf, s.created, s.seen, u.disabled FROM sessions "
        "s JOIN users u ON u.name = s.officer WHERE s.token_hash = ?",
        (digest,),
    )
    if row is None or row[5] or row[3] < now - MAX_AGE_S or row[4] < now - IDLE_S:
        return None
    if now - row[4] > 60:  # at most one write a minute per session
        with db.tx() as conn:
            conn.execute("UPDATE sessions SET seen = ? WHERE token_hash = ?", (now, digest))
    return Session(str(row[0]), str(row[1]), str(row[2]))


def logout(db: Database, token: str, user: str) -> None:
    with db.tx() as conn:
        conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(token),))
        audit.append(conn, user, "logout")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
