"""Authenticated commands from the centre: sign, verify, remember, route.

The centre signs each command with its Ed25519 key; the box holds only the public key, so a
stolen box cannot forge commands for other schools. docs/commands.md is the contract; this module
is its one implementation (the centre's tooling calls :func:`sign_command`).

Trust boundary. Everything on ``…/cmd`` is hostile until :meth:`CommandVerifier.verify` returns:
- Syntax is checked before the signature (cheap refusals), meaning after it (site, name, times,
  typed args, replay). A rejection carries the command id only once the signature has verified,
  so an unauthenticated sender can never make the box publish a result about a real command id.
- Arguments are scalars only and pass a typed validator for their command name before a handler
  sees them; names of things match ``[a-z0-9_-]{1,64}``, so nothing reaches a path or a shell
  unchecked. Floats are refused: their JSON text differs between libraries, and the signature is
  over re-serialised values.
- Replays are refused by a persisted cache of (nonce, id) that survives restarts. Its invariant:
  every accepted command whose ``expires_at`` is later than the cache's *horizon* is in the
  cache; whatever the cache forgets (pruning, the size cap) raises the horizon past it, and a
  command expiring at or before the horizon is refused. So replay protection does not depend on
  the wall clock, which matters on a Pi: it has no RTC and may run far off until NTP sync.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.box import walktest
from agent.clock import clock_synced as kernel_clock_synced
from agent.clock import parse_rfc3339, rfc3339, rfc3339_ms
from agent.db import Sync, open_db
from agent.delivery.protocol import SITE_ID, UUID
from agent.delivery.schema import WireError, load_object, no_duplicates
from agent.errors import AgentError

_no_duplicates = no_duplicates  # the names the tests and older callers use
_parse_timestamp = parse_rfc3339
_format_ms = rfc3339_ms

log = logging.getLogger("agent.commands")

COMMAND_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 16 * 1024
MAX_LIFETIME_S: Final = 3600.0
DEFAULT_TTL_S: Final = 60.0
DEFAULT_MAX_SKEW_S: Final = 300.0
MAX_ARGS: Final = 16
MAX_STRING_CHARS: Final = 256
MAX_INT: Final = 2**53 - 1  # exact in every JSON implementation, JavaScript's included
DEFAULT_MAX_NONCES: Final = 100_000
# Prefixed to the signed bytes: a signature made with the centre's key for any other purpose
# (a future signed config, say) can never be taken for a command, nor the reverse.
SIGNING_CONTEXT: Final = b"edge-agent/command/v1\n"

SIGNED_FIELDS: Final = ("id", "site_id", "name", "args", "issued_at", "expires_at", "nonce", "v")

T = TypeVar("T")
Scalar = str | int | bool | None
ArgsParser = Callable[[Mapping[str, Scalar]], object]

_UUID = UUID
_SITE_ID = SITE_ID
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_THING_ID = re.compile(r"[a-z0-9_-]{1,64}")
_SIG_CHARS = 88  # base64 of 64 bytes, padded
# C0, DEL, C1 controls and lone surrogates: the characters JSON libraries escape differently
# (or cannot encode at all), so the canonical text would not be canonical.
_UNSAFE_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# --------------------------------------------------------------------------------------------------
# Errors.


class CommandRejected(AgentError, ValueError):
    """A command was refused. ``reason`` starts with the rule broken (see docs/commands.md) and
    never quotes the payload; ``command_id`` is set only once the signature has verified."""

    def __init__(self, reason: str, command_id: str | None = None) -> None:
        self.reason = reason
        self.command_id = command_id
        super().__init__(reason if command_id is None else f"command {command_id}: {reason}")

    @property
    def rule(self) -> str:
        return self.reason.partition(":")[0]


class KeyFileError(AgentError, ValueError):
    """A key file is missing, unreadable, exposed to other users, or not an Ed25519 key."""


class NonceStoreError(AgentError, OSError):
    """The replay cache could not be opened or written."""


# --------------------------------------------------------------------------------------------------
# Commands and their typed arguments.


@dataclass(frozen=True, slots=True)
class Command:
    """A verified command. ``args`` are the checked scalars; ``params`` is what the name's
    validator made of them (e.g. :class:`LiveArgs`). Times are seconds since the epoch."""

    id: str
    name: str
    args: dict[str, Scalar]
    issued_at: float
    expires_at: float
    nonce: str
    params: object = None
    clock_unsynced: bool = False  # expiry could not be judged: accepted on a fresh nonce only


@dataclass(frozen=True, slots=True)
class NoArgs:
    pass


@dataclass(frozen=True, slots=True)
class AckArgs:
    event_id: str


@dataclass(frozen=True, slots=True)
class LiveArgs:
    camera_id: str
    seconds: int


@dataclass(frozen=True, slots=True)
class FetchArgs:
    camera_id: str
    start: float  # the command's "from"
    end: float  # "to"


@dataclass(frozen=True, slots=True)
class TestModeArgs:
    __test__ = False  # not a pytest test class, whatever its name says

    on: bool
    minutes: int | None  # set when on, None when off


class _Args:
    """Reads one command's args the way config.py's _Map reads a section: every key a validator
    does not ask for is an unexpected argument."""

    def __init__(self, args: Mapping[str, Scalar]) -> None:
        self._args = args
        self._asked: list[str] = []

    def _get(self, key: str, required: bool = True) -> Scalar:
        self._asked.append(key)
        if key not in self._args:
            if required:
                raise CommandRejected(f"bad_args: {key} is required")
            return None
        return self._args[key]

    def present(self, key: str) -> bool:
        return key in self._args

    def text(self, key: str, pattern: re.Pattern[str], rule: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise CommandRejected(f"bad_args: {key} must be {rule}")
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        value = self._get(key)
        if type(value) is not int or not lo <= value <= hi:
            raise CommandRejected(f"bad_args: {key} must be an integer from {lo} to {hi}")
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise CommandRejected(f"bad_args: {key} must be true or false")
        return value

    def timestamp(self, key: str) -> float:
        value = self._get(key)
        parsed = _parse_timestamp(value)
        if parsed is None:
            raise CommandRejected(f"bad_args: {key} must be RFC 3339 UTC such as"
                                  " 2026-11-25T08:00:00.000Z")
        return parsed

    def done(self) -> None:
        if set(self._args) - set(self._asked):
            allowed = ", ".join(self._asked) or "none"
            raise CommandRejected(f"bad_args: unexpected argument (allowed: {allowed})")


_CAMERA_RULE = "a camera id ([a-z0-9_-], 1 to 64 characters)"


def parse_ping_args(args: Mapping[str, Scalar]) -> NoArgs:
    _Args(args).done()
    return NoArgs()


def parse_ack_args(args: Mapping[str, Scalar]) -> AckArgs:
    reader = _Args(args)
    event_id = reader.text("event_id", _UUID, "a lower-case UUID")
    reader.done()
    return AckArgs(event_id)


def parse_live_args(args: Mapping[str, Scalar]) -> LiveArgs:
    reader = _Args(args)
    camera_id = reader.text("camera_id", _THING_ID, _CAMERA_RULE)
    seconds = reader.integer("seconds", 1, 600)
    reader.done()
    return LiveArgs(camera_id, seconds)


MAX_FETCH_SPAN_S: Final = 3600.0


def parse_fetch_args(args: Mapping[str, Scalar]) -> FetchArgs:
    reader = _Args(args)
    camera_id = reader.text("camera_id", _THING_ID, _CAMERA_RULE)
    start = reader.timestamp("from")
    end = reader.timestamp("to")
    reader.done()
    if not 0 < round((end - start) * 1000) <= MAX_FETCH_SPAN_S * 1000:  # ms: the wire's unit
        raise CommandRejected("bad_args: to must be after from, by at most 3600 s")
    return FetchArgs(camera_id, start, end)


def parse_test_mode_args(args: Mapping[str, Scalar]) -> TestModeArgs:
    reader = _Args(args)
    on = reader.boolean("on")
    if on:
        minutes: int | None = reader.integer("minutes", 1, walktest.MAX_MINUTES)
    elif reader.present("minutes"):
        raise CommandRejected("bad_args: minutes goes only with on: true")
    else:
        minutes = None
    reader.done()
    return TestModeArgs(on, minutes)


STANDARD_COMMANDS: Final[Mapping[str, ArgsParser]] = MappingProxyType({
    "ping": parse_ping_args,
    "ack": parse_ack_args,
    "live": parse_live_args,
    "fetch": parse_fetch_args,
    "test_mode": parse_test_mode_args,
})


# --------------------------------------------------------------------------------------------------
# The wire format.


def signing_bytes(fields: Mapping[str, object]) -> bytes:
    """What the signature covers: the context line, then every field but ``sig`` as compact JSON
    with sorted keys and UTF-8 text (not \\u escapes). Implementations in other languages must
    produce these exact bytes; docs/commands.md spells out why that is easy for valid commands."""
    body = {key: value for key, value in fields.items() if key != "sig"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return SIGNING_CONTEXT + text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class _Fields:
    id: str
    site_id: str
    name: str
    args: dict[str, Scalar]
    issued_at: float
    expires_at: float
    nonce: str
    sig: bytes


def _parse_document(payload: object) -> dict[str, object]:
    """Size first, strict UTF-8 and JSON, an object: the rules every untrusted message meets
    (agent/schema.py)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CommandRejected("not_json: the payload must be bytes")
    try:
        return load_object(payload, MAX_PAYLOAD_BYTES, "a command")
    except WireError as exc:
        raise CommandRejected(str(exc)) from None


def _text_field(doc: Mapping[str, object], key: str, pattern: re.Pattern[str], rule: str) -> str:
    value = doc[key]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise CommandRejected(f"bad_field: {key} must be {rule}")
    return value


def _time_field(doc: Mapping[str, object], key: str) -> float:
    parsed = _parse_timestamp(doc[key])
    if parsed is None:
        raise CommandRejected(f"bad_field: {key} must be RFC 3339 UTC with milliseconds such as"
                              " 2026-11-25T08:00:00.000Z")
    return parsed


def check_args(value: object) -> dict[str, Scalar]:
    """The rules every command's args follow, whatever the name: a flat object of scalars."""
    if not isinstance(value, dict):
        raise CommandRejected("bad_field: args must be an object")
    if len(value) > MAX_ARGS:
        raise CommandRejected(f"bad_args: at most {MAX_ARGS} arguments")
    out: dict[str, Scalar] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise CommandRejected("bad_args: argument names are [a-z][a-z0-9_], at most 32")
        if isinstance(item, str):
            if len(item) > MAX_STRING_CHARS or _UNSAFE_CHAR.search(item):
                raise CommandRejected(f"bad_args: strings are at most {MAX_STRING_CHARS}"
                                      " characters, without control characters")
        elif isinstance(item, float):
            raise CommandRejected("bad_args: numbers must be integers")
        elif isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > MAX_INT:
                raise CommandRejected("bad_args: integers must be within +-(2^53 - 1)")
        elif item is not None and not isinstance(item, bool):
            raise CommandRejected("bad_args: values must be strings, integers, booleans or null")
        out[key] = item
    return out


def _check_structure(doc: dict[str, object]) -> _Fields:
    """Everything that can be checked without the key, in an order that names the real fault."""
    if "v" in doc:  # first: a future version may differ in every other field
        version = doc["v"]
        if type(version) is not int:
            raise CommandRejected("bad_field: v must be an integer")
        if version != COMMAND_VERSION:
            raise CommandRejected(f"bad_version: this box speaks v {COMMAND_VERSION}")
    if "sig" not in doc:
        raise CommandRejected("unsigned: the sig field is missing")
    for key in SIGNED_FIELDS:
        if key not in doc:
            raise CommandRejected(f"missing_field: {key}")
    if len(doc) != len(SIGNED_FIELDS) + 1:
        raise CommandRejected("unknown_field: only " + ", ".join((*SIGNED_FIELDS, "sig")))
    command_id = _text_field(doc, "id", _UUID, "a lower-case UUID")
    site_id = _text_field(doc, "site_id", _SITE_ID, "a site id")
    name = _text_field(doc, "name", _NAME, "a command name ([a-z][a-z0-9_], at most 32)")
    args = check_args(doc["args"])
    issued_at = _time_field(doc, "issued_at")
    expires_at = _time_field(doc, "expires_at")
    nonce = _text_field(doc, "nonce", _NONCE, "32 lower-case hex digits")
    sig = doc["sig"]
    if not isinstance(sig, str):
        raise CommandRejected("bad_field: sig must be a string")
    try:
        raw = base64.b64decode(sig, validate=True) if len(sig) == _SIG_CHARS else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64 or base64.b64encode(raw).decode() != sig:
        raise CommandRejected("bad_base64: sig must be the standard base64 of 64 bytes")
    return _Fields(command_id, site_id, name, args, issued_at, expires_at, nonce, raw)


# --------------------------------------------------------------------------------------------------
# The centre's side.


def sign_command(
    private_key: Ed25519PrivateKey,
    site_id: str,
    name: str,
    args: Mapping[str, Scalar],
    ttl_s: float = DEFAULT_TTL_S,
    now: float | None = None,
) -> bytes:
    """A signed command payload, ready to publish on ``{prefix}/{site_id}/cmd``.

    Raises CommandRejected (with the reason the box would give) for anything a box would refuse
    on its face, so a bad command fails at the centre, not silently at the school.
    """
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError("private_key must be an Ed25519PrivateKey (see load_private_key)")
    if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
        raise CommandRejected("bad_lifetime: ttl_s must be a positive number of seconds")
    if ttl_s > MAX_LIFETIME_S:
        raise CommandRejected(f"lifetime_too_long: at most {MAX_LIFETIME_S:g} s")
    issued_ms = math.floor((time.time() if now is None else now) * 1000)
    doc: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "site_id": site_id,
        "name": name,
        "args": dict(args),
        "issued_at": _format_ms(issued_ms),
        "expires_at": _format_ms(issued_ms + max(1, round(ttl_s * 1000))),
        "nonce": secrets.token_hex(16),
        "v": COMMAND_VERSION,
    }
    _check_structure({**doc, "sig": base64.b64encode(bytes(64)).decode()})
    parser = STANDARD_COMMANDS.get(name)
    if parser is not None:
        parser(check_args(doc["args"]))
    doc["sig"] = base64.b64encode(private_key.sign(signing_bytes(doc))).decode()
    payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandRejected(f"too_large: at most {MAX_PAYLOAD_BYTES} bytes")
    return payload


_KEY_FILE_MAX = 64 * 1024


def _read_key_file(path: Path, private: bool) -> bytes:
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())  # of the file opened, so no swap after the check
            mode = stat.S_IMODE(info.st_mode)
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"{path} is not a regular file")
            if private and mode & 0o077:
                raise KeyFileError(
                    f"{path} is open to other users (mode {mode:04o}) but holds the centre's"
                    f" private key, which signs commands for every school: run chmod 600 {path}"
                    " and consider the key exposed if others could read it")
            return file.read(_KEY_FILE_MAX)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except PermissionError:
        raise KeyFileError(f"{path}: permission denied; run as the key's owner") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise KeyFileError(f"{path}: cannot read the key file: {exc}") from None


def load_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    """The centre's signing key from a PEM file that no other user may read or write."""
    data = _read_key_file(Path(path), private=True)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a usable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key; create one with generate_keypair")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The centre's public key for a box (``commands.public_key_file``), PEM."""
    data = _read_key_file(Path(path), private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a usable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def generate_keypair(directory: str | Path) -> tuple[Path, Path]:
    """Write a new ``centre.key`` (mode 0600) and ``centre.pub`` (0644) into ``directory``.

    Refuses to overwrite: replacing the centre's key silently would lock every box out. Each
    file is written to a temporary name and linked into place, so a crash leaves no half key.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, pub_path = folder / "centre.key", folder / "centre.pub"
    for existing in (key_path, pub_path):
        if existing.exists():
            raise KeyFileError(f"{existing} already exists; move it away to make a new pair")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(key_path, private_pem, 0o600)
    _write_new(pub_path, public_pem, 0o644)
    return key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        try:
            os.link(temp, path)  # atomic, and fails if someone made the file meanwhile
        except FileExistsError:
            raise KeyFileError(f"{path} already exists; move it away to make a new pair") from None
    finally:
        temp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# The replay cache.

_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    nonce      TEXT    NOT NULL UNIQUE,   -- both unique: a replay is refused on either
    command_id TEXT    NOT NULL UNIQUE,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_by_expiry ON seen (expires_ms);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- horizon_ms: the latest expiry of any command this cache forgot. A command that expires at or
-- before it may have been accepted and forgotten, so it is refused as a possible replay.
INSERT OR IGNORE INTO meta (name, value) VALUES ('horizon_ms', 0);
"""


class NonceStore:
    """The persisted (nonce, id) cache. Open with :meth:`open`; the constructor does no I/O.

    SQLite choices: WAL with ``synchronous=FULL``, because a nonce must be on disk before its
    command runs, or a power cut between the two would let a replay through after the reboot.
    Each check-and-add is one ``BEGIN IMMEDIATE`` transaction, atomic even across processes.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path,
                 max_rows: int = DEFAULT_MAX_NONCES) -> None:
        self._conn = conn
        self.path = path
        self.max_rows = max_rows
        # Guards _conn: sqlite3 objects are not safe to use concurrently. Held for one short
        # transaction at a time and never while calling out of this class.
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, max_rows: int = DEFAULT_MAX_NONCES) -> NonceStore:
        """Open or create the cache; a corrupt file is moved aside and a clean one started.

        A clean cache forgets past nonces: while the clock is synced, expiry still refuses old
        commands; the window is the lifetime of commands captured recently (docs/commands.md).
        """
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        opened = open_db(path, _setup, what="replay cache", sync=Sync.FULL, autocommit=True,
                         private=True, error=NonceStoreError,
                         lost="commands captured in the last hour could be replayed once")
        return cls(opened.conn, path, max_rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @property
    def horizon(self) -> float:
        """Commands expiring at or before this moment (epoch seconds) are refused."""
        with self._lock:
            try:
                return _horizon_ms(self._conn) / 1000
            except sqlite3.Error as exc:
                raise NonceStoreError(f"replay cache read failed: {exc}") from exc

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT COUNT(*) FROM seen").fetchone()
        return int(count)

    def seen_or_add(self, nonce: str, command_id: str, expires_at: float, *,
                    forget_before: float | None = None) -> bool:
        """True when the nonce or the id was seen, or the command expires at or before the
        horizon; otherwise remember it durably and return False. ``forget_before`` prunes in the
        same transaction (one fsync): pass it only from a trustworthy clock."""
        expires_ms = round(expires_at * 1000)

        def tx(conn: sqlite3.Connection) -> bool:
            if forget_before is not None:
                self._forget(conn, "expires_ms < ?", (round(forget_before * 1000),))
            if expires_ms <= _horizon_ms(conn):
                return True
            cur = conn.execute(
                "INSERT OR IGNORE INTO seen (nonce, command_id, expires_ms) VALUES (?, ?, ?)",
                (nonce, command_id, expires_ms))
            if cur.rowcount != 1:
                return True
            # COUNT(*) on every add: commands come from people, a few an hour, so a scan of at
            # most max_rows index entries is cheap, and simpler than keeping a counter right.
            (count,) = conn.execute("SELECT COUNT(*) FROM seen").fetchone()
            if count > self.max_rows:
                dropped = self._forget(conn, "rowid IN (SELECT rowid FROM seen ORDER BY "
                                       "expires_ms, rowid LIMIT ?)", (count - self.max_rows,))
                log.warning("replay cache full: forgot the %d commands expiring first", dropped)
            return False

        return self._write(tx)

    def prune(self, before: float) -> int:
        """Forget commands that expired before ``before`` (from a trustworthy clock)."""
        return self._write(lambda conn: self._forget(conn, "expires_ms < ?",
                                                     (round(before * 1000),)))

    @staticmethod
    def _forget(conn: sqlite3.Connection, where: str, params: tuple[int, ...]) -> int:
        """Delete rows and raise the horizon to the latest expiry deleted, in the caller's tx."""
        count, top = conn.execute(f"SELECT COUNT(*), MAX(expires_ms) FROM seen WHERE {where}",
                                  params).fetchone()
        if not count:
            return 0
        conn.execute(f"DELETE FROM seen WHERE {where}", params)
        conn.execute("UPDATE meta SET value = MAX(value, ?) WHERE name = 'horizon_ms'", (top,))
        return int(count)

    def _write(self, tx: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = tx(self._conn)
                    self._conn.execute("COMMIT")  # the WAL fsync: durable from here
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise NonceStoreError(f"replay cache write failed ({exc}); is"
                                      f" {self.path.parent} full or read-only?") from exc
        return result


def _horizon_ms(conn: sqlite3.Connection) -> int:
    (value,) = conn.execute("SELECT value FROM meta WHERE name = 'horizon_ms'").fetchone()
    return int(value)


def _setup(conn: sqlite3.Connection) -> None:
    conn.executescript(_STORE_SCHEMA)
    try:  # a file from something else fails here, not at the first command
        _horizon_ms(conn)
    except (TypeError, ValueError) as exc:
        raise sqlite3.DatabaseError(f"not a replay cache: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# The box's side: verify.


class CommandVerifier:
    """Turns payloads from ``…/cmd`` into verified :class:`Command` s, or CommandRejected.

    ``commands`` is the allow-list: a name maps to the validator of its args, so no name can be
    allowed without its arguments being checked. ``clock_synced`` is asked on every command
    (the kernel's NTP flag by default): while it is False, expiry cannot be judged, and a command
    is accepted on a fresh nonce alone, marked ``clock_unsynced``.
    """

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        site_id: str,
        nonce_store: NonceStore,
        clock: Callable[[], float] = time.time,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        *,
        commands: Mapping[str, ArgsParser] = STANDARD_COMMANDS,
        clock_synced: Callable[[], bool] = kernel_clock_synced,
        max_lifetime_s: float = MAX_LIFETIME_S,
    ) -> None:
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError("public_key must be an Ed25519PublicKey (see load_public_key)")
        if not _SITE_ID.fullmatch(site_id):
            raise ValueError(f"invalid site id {site_id!r}")
        bad = [name for name in commands if not _NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"invalid command names {bad}: use [a-z][a-z0-9_], at most 32")
        if not 0 <= max_skew_s <= 3600 or not 0 < max_lifetime_s <= 86400:
            raise ValueError("max_skew_s must be 0..3600 and max_lifetime_s 0..86400 seconds")
        self._key = public_key
        self.site_id = site_id
        self._store = nonce_store
        self._clock = clock
        self._clock_synced = clock_synced
        self.max_skew_s = float(max_skew_s)
        self.max_lifetime_s = float(max_lifetime_s)
        self._commands = dict(commands)

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(self._commands)

    def verify(self, payload: bytes) -> Command:
        doc = _parse_document(payload)
        fields = _check_structure(doc)  # after this, doc holds exactly the checked fields
        try:
            self._key.verify(fields.sig, signing_bytes(doc))
        except InvalidSignature:
            raise CommandRejected("bad_signature: not signed by the centre's key") from None
        return self._check_meaning(fields)

    def _check_meaning(self, fields: _Fields) -> Command:
        """The rules that need a verified sender; every rejection from here carries the id."""
        cid = fields.id

        def reject(reason: str) -> CommandRejected:
            return CommandRejected(reason, cid)

        if fields.site_id != self.site_id:
            raise reject("wrong_site: the command is for another site")
        parser = self._commands.get(fields.name)
        if parser is None:
            raise reject("unknown_command: not allowed on this box")
        lifetime = fields.expires_at - fields.issued_at
        if lifetime <= 0:
            raise reject("bad_lifetime: expires_at must be after issued_at")
        if lifetime > self.max_lifetime_s:
            raise reject(f"lifetime_too_long: at most {self.max_lifetime_s:g} s")
        try:
            params = parser(fields.args)
        except CommandRejected as exc:
            raise reject(exc.reason) from None
        synced = bool(self._clock_synced())
        forget_before = None
        if synced:
            now = self._clock()
            if fields.issued_at > now + self.max_skew_s:
                raise reject(f"not_yet_valid: issued more than {self.max_skew_s:g} s ahead of"
                             " the box's clock")
            if fields.expires_at < now - self.max_skew_s:
                raise reject("expired")
            forget_before = now - (self.max_lifetime_s + self.max_skew_s)
        try:
            if fields.expires_at <= self._store.horizon:
                raise reject("expired: older than commands this box has already forgotten")
            seen = self._store.seen_or_add(fields.nonce, cid, fields.expires_at,
                                           forget_before=forget_before)
        except NonceStoreError as exc:  # fail closed: without the cache a replay would pass
            log.error("command %s refused: %s", cid, exc)
            raise reject("replay_store_unavailable") from None
        if seen:
            raise reject("replayed: this nonce or id was already used")
        return Command(cid, fields.name, dict(fields.args), fields.issued_at, fields.expires_at,
                       fields.nonce, params, clock_unsynced=not synced)


# --------------------------------------------------------------------------------------------------
# Results and routing.

_REASON_MAX = 200


def result_payload(command_id: str | None, ok: bool, reason: str = "",
                   data: Mapping[str, object] | None = None, *, at: float | None = None) -> bytes:
    """The JSON answer on ``…/cmd/result``. An id that is not a UUID is sent as null: nothing
    from the payload is echoed but a validated id."""
    safe_id = command_id if isinstance(command_id, str) and _UUID.fullmatch(command_id) else None
    body = {
        "id": safe_id,
        "ok": bool(ok),
        "reason": str(reason)[:_REASON_MAX],
        "data": dict(data) if data else {},
        "at": rfc3339(time.time() if at is None else at),
        "v": COMMAND_VERSION,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


Handler = Callable[[Command], Mapping[str, object] | None]


@dataclass(frozen=True, slots=True)
class Reply:
    """What :meth:`CommandRouter.respond` made of one payload.

    ``authenticated`` is False for payloads refused before their signature verified: anyone who
    can publish on ``…/cmd`` can cause those, so the uplink should not queue them durably.
    """

    payload: bytes
    command_id: str | None
    ok: bool
    authenticated: bool


_FALLBACK = b'{"id":null,"ok":false,"reason":"internal_error","data":{},"at":null,"v":1}'


class CommandRouter:
    """Verifies each payload and runs the handler of its name; never raises, never leaks.

    A handler gets a verified :class:`Command` and returns the result's ``data`` (or None). It
    may raise CommandRejected to refuse with its own reason (which must not quote input);
    anything else it raises becomes ``internal_error`` on the wire and a traceback in the log.
    Handlers run on the caller's thread (the uplink's): they should hand long work on.
    """

    def __init__(self, verifier: CommandVerifier, handlers: Mapping[str, Handler],
                 clock: Callable[[], float] = time.time) -> None:
        unknown = sorted(set(handlers) - verifier.allowed)
        if unknown:
            raise ValueError(f"handlers for commands the verifier does not allow: {unknown}")
        self._verifier = verifier
        self._handlers = dict(handlers)
        self._clock = clock

    def handle(self, payload: bytes) -> bytes:
        return self.respond(payload).payload

    def respond(self, payload: bytes) -> Reply:
        try:
            return self._respond(payload)
        except Exception:  # a bug here must not reach the wire or take the uplink down
            log.exception("command router failed")
            try:
                return Reply(result_payload(None, False, "internal_error"), None, False, False)
            except Exception:
                return Reply(_FALLBACK, None, False, False)

    def _respond(self, payload: bytes) -> Reply:
        try:
            command = self._verifier.verify(payload)
        except CommandRejected as exc:
            authenticated = exc.command_id is not None
            log.warning("command %s rejected: %s", exc.command_id or "(unauthenticated)",
                        exc.reason)
            return self._reply(exc.command_id, False, exc.reason, None, authenticated)
        extra: dict[str, object] = {"clock_unsynced": True} if command.clock_unsynced else {}
        handler = self._handlers.get(command.name)
        if handler is None:
            log.warning("command %s (%s) has no handler", command.id, command.name)
            return self._reply(command.id, False, "unsupported: no handler on this box", extra,
                               True)
        try:
            data = handler(command)
            if data is not None and not isinstance(data, Mapping):
                raise TypeError(f"handler returned {type(data).__name__}, not a mapping")
            reply = self._reply(command.id, True, "", {**(data or {}), **extra}, True)
        except CommandRejected as exc:
            log.warning("command %s (%s) refused by its handler: %s", command.id, command.name,
                        exc.reason)
            return self._reply(command.id, False, exc.reason, extra, True)
        except Exception:
            log.exception("handler for command %s (%s) failed", command.id, command.name)
            return self._reply(command.id, False, "internal_error: the handler failed", extra,
                               True)
        log.info("command %s (%s) done", command.id, command.name)
        return reply

    def _reply(self, command_id: str | None, ok: bool, reason: str,
               data: Mapping[str, object] | None, authenticated: bool) -> Reply:
        payload = result_payload(command_id, ok, reason, data, at=self._clock())
        return Reply(payload, command_id, ok, authenticated)
