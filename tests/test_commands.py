"""Authenticated commands: the wire contract, every rejection rule, replay across restarts, key
files, and fuzzing of the one entry point the network reaches (CommandRouter.handle)."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.clock import parse_rfc3339, rfc3339_ms
from agent.commands.args import (
    PING,
    STANDARD,
    AckArgs,
    CommandType,
    FetchArgs,
    LiveArgs,
    NoArgs,
    TestModeArgs,
)
from agent.commands.keys import (
    KeyFileError,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_command,
)
from agent.commands.nonces import NonceStore
from agent.commands.router import CommandRouter, CommandSpec, Data
from agent.commands.verify import Command, CommandVerifier
from agent.commands.wire import (
    MAX_INT,
    MAX_PAYLOAD_BYTES,
    SIGNED_FIELDS,
    SIGNING_CONTEXT,
    CommandRejected,
    result_payload,
    signing_bytes,
)
from agent.delivery.protocol import UUID
from agent.delivery.schema import no_duplicates
from agent.errors import AgentError

SITE = "school-042"
NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z, a synced clock
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
CAM = "entrance-cam"
EVENT = "f173ce1e-19ff-4a4e-ae9e-b5a1ec08ae09"


@dataclass
class FakeClock:
    """The box's wall clock and the kernel's NTP flag, both set by the test."""

    now: float = NOW
    synced: bool = True

    def time(self) -> float:
        return self.now

    def is_synced(self) -> bool:
        return self.synced


def make_verifier(store: NonceStore, clock: FakeClock, **kw: Any) -> CommandVerifier:
    return CommandVerifier(
        KEY.public_key(), SITE, store, clock.time, clock_synced=clock.is_synced, **kw
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[NonceStore]:
    s = NonceStore.open(tmp_path / "nonces.db")
    yield s
    s.close()


@pytest.fixture
def verifier(store: NonceStore, clock: FakeClock) -> CommandVerifier:
    return make_verifier(store, clock)


def sign(name: str = "live", args: dict[str, Any] | None = None, **kw: Any) -> bytes:
    args = {"camera_id": CAM, "seconds": 30} if args is None and name == "live" else args or {}
    return sign_command(KEY, SITE, name, args, now=kw.pop("now", NOW), **kw)


def doc_of(payload: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(payload)
    return out


def forge(key: Ed25519PrivateKey | None = KEY, drop: tuple[str, ...] = (), **fields: Any) -> bytes:
    """A command with any fields, correctly signed by ``key`` (None: left unsigned)."""
    doc = doc_of(sign())
    doc.pop("sig")
    sig = fields.pop("sig", None)
    doc.update(fields)
    for name in drop:
        doc.pop(name, None)
    if key is not None:
        doc["sig"] = base64.b64encode(key.sign(signing_bytes(doc))).decode()
    if sig is not None:
        doc["sig"] = sig
    return json.dumps(doc).encode()


def rejected(verifier: CommandVerifier, payload: bytes) -> CommandRejected:
    with pytest.raises(CommandRejected) as info:
        verifier.verify(payload)
    return info.value


def ts(offset_s: float) -> str:
    return rfc3339_ms(round((NOW + offset_s) * 1000))


# --------------------------------------------------------------------------------------------------
# Accepted.


def test_good_command_is_accepted(verifier: CommandVerifier) -> None:
    payload = sign("live", {"camera_id": CAM, "seconds": 30})
    command = verifier.verify(payload)
    doc = doc_of(payload)
    assert command == Command(
        doc["id"],
        "live",
        {"camera_id": CAM, "seconds": 30},
        NOW,
        NOW + 60,
        doc["nonce"],
        LiveArgs(CAM, 30),
        clock_unsynced=False,
    )
    assert set(doc) == {*SIGNED_FIELDS, "sig"}
    assert doc["issued_at"] == "2026-11-18T11:06:40.000Z"


def test_key_order_and_whitespace_do_not_matter(verifier: CommandVerifier) -> None:
    """The signature is over the canonical form, not the bytes as sent."""
    doc = doc_of(sign())
    respaced = json.dumps(dict(reversed(list(doc.items()))), indent=2).encode()
    assert verifier.verify(respaced).id == doc["id"]


def test_errors_belong_to_the_agent_root() -> None:
    assert issubclass(CommandRejected, AgentError) and issubclass(CommandRejected, ValueError)
    assert issubclass(KeyFileError, AgentError)


# --------------------------------------------------------------------------------------------------
# Rejected before the signature: no id in the rejection, whatever the payload says.

DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        (b"", "not_json"),
        (b"{", "not_json"),
        (b"\xff\xfe{}", "not_json"),
        ('{"a":1}'.encode("utf-16"), "not_json"),  # json.loads(bytes) would have accepted this
        (b'{"v":1,"v":1}', "not_json"),
        (b'{"x":NaN}', "not_json"),
        (DEEP, "not_json"),
        (b"[]", "not_object"),
        (b"42", "not_object"),
        (b'"cmd"', "not_object"),
        (b"null", "not_object"),
        (b" " * MAX_PAYLOAD_BYTES + b"{}", "too_large"),
    ],
    ids=[
        "empty",
        "truncated",
        "not-utf8",
        "utf16",
        "duplicate-key",
        "nan",
        "deep",
        "array",
        "number",
        "string",
        "null",
        "too-large",
    ],
)
def test_not_a_command(verifier: CommandVerifier, payload: bytes, rule: str) -> None:
    exc = rejected(verifier, payload)
    assert (exc.rule, exc.command_id) == (rule, None)


def test_too_large_even_when_valid(verifier: CommandVerifier) -> None:
    payload = sign()
    padded = payload[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(payload) + 1) + b"}"
    assert rejected(verifier, padded).rule == "too_large"
    assert verifier.verify(padded[: MAX_PAYLOAD_BYTES - 1] + b"}").name == "live"  # 16 KB is ok


@pytest.mark.parametrize("field", SIGNED_FIELDS)
def test_missing_field(verifier: CommandVerifier, field: str) -> None:
    exc = rejected(verifier, forge(drop=(field,)))
    assert exc.reason == f"missing_field: {field}" and exc.command_id is None


def test_unsigned(verifier: CommandVerifier) -> None:
    assert rejected(verifier, forge(key=None)).rule == "unsigned"


def test_unknown_field_even_when_signed(verifier: CommandVerifier) -> None:
    exc = rejected(verifier, forge(extra="x"))
    assert exc.rule == "unknown_field" and "extra" not in exc.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "not-a-uuid"),
        ("id", EVENT.upper()),
        ("id", 42),
        ("site_id", 42),
        ("site_id", "School 42"),
        ("name", "Live; rm -rf /"),
        ("name", ["live"]),
        ("args", ["camera_id"]),
        ("args", "camera_id=x"),
        ("issued_at", "2026-11-18T22:13:20Z"),  # no milliseconds
        ("issued_at", "2026-11-18T22:13:20.000+00:00"),
        ("issued_at", "2026-13-18T22:13:20.000Z"),
        ("issued_at", "٢٠٢٦-11-18T22:13:20.000Z"),  # non-ASCII digits
        ("expires_at", 1795000060),
        ("nonce", "abc"),
        ("nonce", "0" * 31 + "G"),
        ("v", "1"),
        ("v", True),
        ("v", 1.0),
        ("sig", 123),
    ],
)
def test_badly_typed_field(verifier: CommandVerifier, field: str, value: Any) -> None:
    exc = rejected(verifier, forge(**{field: value}))
    assert exc.reason.startswith(f"bad_field: {field}") and exc.command_id is None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"camera_id": CAM, "seconds": 30.0}, "integers"),
        ({"camera_id": CAM, "seconds": [30]}, "values must be"),
        ({"camera_id": {"id": CAM}, "seconds": 30}, "values must be"),
        ({"camera_id": "x" * 257, "seconds": 30}, "at most 256"),
        ({"camera_id": "cam\n1", "seconds": 30}, "control characters"),
        ({"camera_id": CAM, "seconds": 2**53}, "2^53"),
        ({"Camera": CAM}, "argument names"),
        ({f"a{i}": 1 for i in range(17)}, "at most 16"),
    ],
)
def test_args_that_no_command_may_have(
    verifier: CommandVerifier, args: dict[str, Any], fragment: str
) -> None:
    exc = rejected(verifier, forge(args=args))
    assert exc.rule == "bad_args" and fragment in exc.reason


def test_wrong_version(verifier: CommandVerifier) -> None:
    assert rejected(verifier, forge(v=2)).rule == "bad_version"


@pytest.mark.parametrize(
    "sig",
    [
        "!!!",
        "A" * 87,
        base64.b64encode(bytes(63)).decode(),
        base64.b64encode(bytes(64)).decode().rstrip("="),
        " " + base64.b64encode(bytes(64)).decode()[1:],
    ],
)
def test_bad_base64(verifier: CommandVerifier, sig: str) -> None:
    doc = doc_of(sign()) | {"sig": sig}
    assert rejected(verifier, json.dumps(doc).encode()).rule == "bad_base64"


def test_forged_signature(verifier: CommandVerifier) -> None:
    exc = rejected(verifier, forge(key=OTHER_KEY))
    assert (exc.rule, exc.command_id) == ("bad_signature", None)
    zeros = doc_of(sign()) | {"sig": base64.b64encode(bytes(64)).decode()}
    assert rejected(verifier, json.dumps(zeros).encode()).rule == "bad_signature"


def test_signature_without_the_context_prefix_is_refused(verifier: CommandVerifier) -> None:
    doc = doc_of(sign())
    bare = signing_bytes(doc)[len(SIGNING_CONTEXT) :]
    doc["sig"] = base64.b64encode(KEY.sign(bare)).decode()
    assert rejected(verifier, json.dumps(doc).encode()).rule == "bad_signature"


MUTATIONS: dict[str, Any] = {
    "id": str(uuid.uuid4()),
    "site_id": "school-043",
    "name": "ping",
    "args": {"camera_id": CAM, "seconds": 31},
    "issued_at": ts(-1),
    "expires_at": ts(61),
    "nonce": "0" * 32,
    "v": 1,  # the only valid v: the tamper test replaces it below by bad_version
}


@pytest.mark.parametrize("field", [f for f in SIGNED_FIELDS if f != "v"])
def test_tampering_any_field_invalidates_the_signature(
    verifier: CommandVerifier, field: str
) -> None:
    doc = doc_of(sign()) | {field: MUTATIONS[field]}
    exc = rejected(verifier, json.dumps(doc).encode())
    assert (exc.rule, exc.command_id) == ("bad_signature", None)


def test_tampering_inside_args(verifier: CommandVerifier) -> None:
    for args in (
        {"camera_id": "other-cam", "seconds": 30},
        {"camera_id": CAM},
        {"camera_id": CAM, "seconds": 30, "x": 1},
    ):
        doc = doc_of(sign()) | {"args": args}
        assert rejected(verifier, json.dumps(doc).encode()).rule == "bad_signature"


# --------------------------------------------------------------------------------------------------
# Rejected after the signature: the id is known and reported.


def test_wrong_site(verifier: CommandVerifier) -> None:
    payload = sign_command(KEY, "school-043", "ping", {}, now=NOW)
    exc = rejected(verifier, payload)
    assert (exc.rule, exc.command_id) == ("wrong_site", doc_of(payload)["id"])


def test_name_outside_the_allow_list(store: NonceStore, clock: FakeClock) -> None:
    verifier = make_verifier(store, clock, commands=[PING])
    assert rejected(verifier, sign("live")).rule == "unknown_command"
    assert rejected(verifier, forge(name="reboot", args={})).rule == "unknown_command"
    assert verifier.verify(sign("ping")).name == "ping"


def test_expired_and_from_the_future(verifier: CommandVerifier, clock: FakeClock) -> None:
    clock.now = NOW + 60 + 300 + 1  # expiry plus the allowed skew, plus one
    assert rejected(verifier, sign()).rule == "expired"
    clock.now = NOW - 300 - 1
    assert rejected(verifier, sign()).rule == "not_yet_valid"
    clock.now = NOW - 299  # within the skew either way
    assert verifier.verify(sign()).name == "live"


def test_lifetime_limits(verifier: CommandVerifier) -> None:
    exc = rejected(verifier, forge(expires_at=ts(3600.001)))
    assert exc.rule == "lifetime_too_long" and exc.command_id is not None
    assert rejected(verifier, forge(expires_at=ts(0))).rule == "bad_lifetime"
    assert rejected(verifier, forge(expires_at=ts(-10))).rule == "bad_lifetime"
    assert verifier.verify(forge(expires_at=ts(3600))).expires_at == NOW + 3600


def test_replayed_nonce_and_replayed_id(verifier: CommandVerifier) -> None:
    payload = sign()
    verifier.verify(payload)
    exc = rejected(verifier, payload)
    assert (exc.rule, exc.command_id) == ("replayed", doc_of(payload)["id"])
    same_nonce = forge(nonce=doc_of(payload)["nonce"])
    assert rejected(verifier, same_nonce).rule == "replayed"
    same_id = forge(id=doc_of(payload)["id"])
    assert rejected(verifier, same_id).rule == "replayed"


def test_rejected_commands_do_not_burn_their_nonce(
    verifier: CommandVerifier, clock: FakeClock
) -> None:
    payload = sign()
    clock.now = NOW - 1000
    assert rejected(verifier, payload).rule == "not_yet_valid"
    clock.now = NOW
    assert verifier.verify(payload).name == "live"


def test_replay_after_restart_is_rejected(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "nonces.db"
    payload = sign()
    first = NonceStore.open(db)
    make_verifier(first, clock).verify(payload)
    first.close()  # the agent restarts
    second = NonceStore.open(db)
    assert rejected(make_verifier(second, clock), payload).rule == "replayed"
    assert oct(os.stat(db).st_mode & 0o777) == "0o600"


# --------------------------------------------------------------------------------------------------
# The clock: no RTC on a Pi.


def test_unsynced_clock_accepts_a_fresh_nonce_and_says_so(
    verifier: CommandVerifier, clock: FakeClock
) -> None:
    clock.synced, clock.now = False, 946_684_800.0  # booted in 2000, no NTP yet
    payload = sign()
    command = verifier.verify(payload)
    assert command.clock_unsynced
    assert rejected(verifier, payload).rule == "replayed"  # replay protection still holds
    assert rejected(verifier, forge(expires_at=ts(7200))).rule == "lifetime_too_long"


def test_unsynced_clock_still_refuses_commands_older_than_the_forgotten(
    verifier: CommandVerifier, store: NonceStore, clock: FakeClock
) -> None:
    old = sign(now=NOW - 86400)
    clock.now = NOW - 86400
    verifier.verify(old)
    clock.now = NOW
    verifier.verify(sign())  # a synced command prunes the day-old nonce, raising the horizon
    assert len(store) == 1 and store.horizon == NOW - 86400 + 60
    clock.synced, clock.now = False, 0.0  # a reboot without NTP
    exc = rejected(verifier, old)
    assert exc.rule == "expired" and "forgotten" in exc.reason


def test_unsynced_clock_does_not_prune(
    verifier: CommandVerifier, store: NonceStore, clock: FakeClock
) -> None:
    verifier.verify(sign())
    clock.synced, clock.now = False, NOW + 10 * 365 * 86400  # a clock years ahead
    verifier.verify(sign(now=NOW + 1))
    assert len(store) == 2 and store.horizon == 0


# --------------------------------------------------------------------------------------------------
# The replay cache itself.


def test_store_is_atomic_on_nonce_and_on_id(store: NonceStore) -> None:
    assert not store.seen_or_add("a" * 32, EVENT, NOW)
    assert store.seen_or_add("a" * 32, str(uuid.uuid4()), NOW)
    assert store.seen_or_add("b" * 32, EVENT, NOW)
    assert len(store) == 1


def test_store_size_is_bounded_without_opening_a_replay_window(tmp_path: Path) -> None:
    store = NonceStore.open(tmp_path / "n.db", max_rows=3)
    entries = [(f"{i:032x}", str(uuid.uuid4()), NOW + i) for i in range(5)]
    for entry in entries:
        assert not store.seen_or_add(*entry)
    assert len(store) == 3
    assert store.horizon == NOW + 1  # the two expiring first were forgotten...
    assert store.seen_or_add(*entries[0]) and store.seen_or_add(*entries[1])  # ...and still refused
    assert not store.seen_or_add("f" * 32, str(uuid.uuid4()), NOW + 10)


def test_prune_keeps_what_is_not_yet_expired(store: NonceStore) -> None:
    store.seen_or_add("a" * 32, str(uuid.uuid4()), NOW - 100)
    store.seen_or_add("b" * 32, str(uuid.uuid4()), NOW + 100)
    assert store.prune(NOW) == 1
    assert len(store) == 1 and store.horizon == NOW - 100
    assert store.prune(NOW) == 0 and store.horizon == NOW - 100


def test_corrupt_store_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "nonces.db"
    db.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR, "agent.commands"):
        store = NonceStore.open(db)
    assert not store.seen_or_add("a" * 32, EVENT, NOW)
    assert any("corrupt" in r.message for r in caplog.records)
    assert [p.name for p in tmp_path.glob("nonces.db.corrupt-*")]


def test_foreign_sqlite_file_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "nonces.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (a TEXT, b TEXT)")  # someone else's database
    conn.commit()
    conn.close()
    store = NonceStore.open(db)
    assert not store.seen_or_add("a" * 32, EVENT, NOW)
    assert [p.name for p in tmp_path.glob("nonces.db.corrupt-*")]


def test_tampered_horizon_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "nonces.db"
    NonceStore.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = 'soon' WHERE name = 'horizon_ms'")
    conn.commit()
    conn.close()
    assert NonceStore.open(db).horizon == 0
    assert [p.name for p in tmp_path.glob("nonces.db.corrupt-*")]


def test_bytes_like_payloads_only(verifier: CommandVerifier) -> None:
    payload = sign()
    assert rejected(verifier, payload.decode()).rule == "not_json"  # type: ignore[arg-type]
    assert verifier.verify(memoryview(bytearray(payload))).name == "live"  # type: ignore[arg-type]


def test_unwritable_store_fails_closed(verifier: CommandVerifier, store: NonceStore) -> None:
    store.close()
    exc = rejected(verifier, sign())
    assert exc.rule == "replay_store_unavailable" and exc.command_id is not None


# --------------------------------------------------------------------------------------------------
# Typed args.


@pytest.mark.parametrize(
    ("name", "args", "params"),
    [
        ("ping", {}, NoArgs()),
        ("ack", {"event_id": EVENT}, AckArgs(EVENT)),
        ("live", {"camera_id": "cam_1-a", "seconds": 1}, LiveArgs("cam_1-a", 1)),
        ("live", {"camera_id": "c" * 64, "seconds": 600}, LiveArgs("c" * 64, 600)),
        (
            "fetch",
            {"camera_id": CAM, "from": ts(-3600), "to": ts(0)},
            FetchArgs(CAM, NOW - 3600, NOW),
        ),
        ("test_mode", {"on": True, "minutes": 240}, TestModeArgs(True, 240)),
        ("test_mode", {"on": False}, TestModeArgs(False, None)),
    ],
)
def test_valid_args(
    verifier: CommandVerifier, name: str, args: dict[str, Any], params: object
) -> None:
    assert verifier.verify(sign(name, args)).params == params


@pytest.mark.parametrize(
    ("name", "args", "fragment"),
    [
        ("ping", {"x": 1}, "unexpected argument (allowed: none)"),
        ("ack", {}, "event_id is required"),
        ("ack", {"event_id": "../../etc/passwd"}, "event_id must be"),
        ("live", {"camera_id": "../etc", "seconds": 30}, "camera_id must be"),
        ("live", {"camera_id": "cam;reboot", "seconds": 30}, "camera_id must be"),
        ("live", {"camera_id": "Cam", "seconds": 30}, "camera_id must be"),
        ("live", {"camera_id": "c" * 65, "seconds": 30}, "camera_id must be"),
        ("live", {"camera_id": CAM, "seconds": 0}, "from 1 to 600"),
        ("live", {"camera_id": CAM, "seconds": 601}, "from 1 to 600"),
        ("live", {"camera_id": CAM, "seconds": True}, "from 1 to 600"),
        ("live", {"camera_id": CAM, "seconds": "30"}, "from 1 to 600"),
        ("live", {"camera_id": CAM, "seconds": 30, "path": "/tmp"}, "unexpected argument"),
        ("fetch", {"camera_id": CAM, "from": ts(0), "to": ts(0)}, "at most 3600 s"),
        ("fetch", {"camera_id": CAM, "from": ts(-3601), "to": ts(0)}, "at most 3600 s"),
        ("fetch", {"camera_id": CAM, "from": ts(0), "to": ts(-1)}, "at most 3600 s"),
        ("fetch", {"camera_id": CAM, "from": "yesterday", "to": ts(0)}, "from must be RFC 3339"),
        ("test_mode", {"on": "yes", "minutes": 5}, "on must be true or false"),
        ("test_mode", {"on": True}, "minutes is required"),
        ("test_mode", {"on": True, "minutes": 241}, "from 1 to 240"),
        ("test_mode", {"on": False, "minutes": 5}, "only with on: true"),
    ],
)
def test_invalid_args(
    verifier: CommandVerifier, name: str, args: dict[str, Any], fragment: str
) -> None:
    exc = rejected(verifier, forge(name=name, args=args))
    assert exc.rule == "bad_args" and fragment in exc.reason and exc.command_id is not None


@pytest.mark.parametrize(
    ("site", "name", "args", "ttl", "rule"),
    [
        (SITE, "live", {"camera_id": "../x", "seconds": 30}, 60, "bad_args"),
        ("School 42", "ping", {}, 60, "bad_field"),
        (SITE, "Ping", {}, 60, "bad_field"),
        (SITE, "custom", {"x": 1.5}, 60, "bad_args"),
        (SITE, "ping", {}, 3601, "lifetime_too_long"),
        (SITE, "ping", {}, 0, "bad_lifetime"),
        (SITE, "custom", {f"k{i}": "\U0001f600" * 256 for i in range(16)}, 60, "too_large"),
    ],
)
def test_sign_command_refuses_what_a_box_would_refuse(
    site: str, name: str, args: Any, ttl: float, rule: str
) -> None:
    with pytest.raises(CommandRejected) as info:
        sign_command(KEY, site, name, args, ttl_s=ttl)
    assert info.value.rule == rule


# --------------------------------------------------------------------------------------------------
# Key files.


def test_generate_keypair_modes_and_round_trip(
    tmp_path: Path, store: NonceStore, clock: FakeClock
) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "keys")
    assert (key_path.name, pub_path.name) == ("centre.key", "centre.pub")
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    assert os.stat(pub_path).st_mode & 0o777 == 0o644
    private, public = load_private_key(key_path), load_public_key(pub_path)
    verifier = CommandVerifier(public, SITE, store, clock.time, clock_synced=clock.is_synced)
    assert verifier.verify(sign_command(private, SITE, "ping", {}, now=NOW)).name == "ping"
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path / "keys")
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["centre.key", "centre.pub"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_private_key_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    key_path, _ = generate_keypair(tmp_path)
    os.chmod(key_path, mode)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        load_private_key(key_path)
    assert f"{mode:04o}" in str(info.value)


def test_key_files_that_are_not_ed25519(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        load_private_key(path)
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(KeyFileError, match="not a usable"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(KeyFileError, match="not found"):
        load_public_key(tmp_path / "missing.pub")


# --------------------------------------------------------------------------------------------------
# Results and the router.

RESULT_KEYS = {"id", "ok", "reason", "data", "at", "v"}


def check_result(raw: bytes) -> dict[str, Any]:
    result = json.loads(raw.decode("utf-8"))
    assert isinstance(result, dict) and set(result) == RESULT_KEYS
    assert result["id"] is None or UUID.fullmatch(result["id"])
    assert isinstance(result["ok"], bool) and isinstance(result["reason"], str)
    assert isinstance(result["data"], dict) and result["v"] == 1
    assert parse_rfc3339(result["at"]) is not None
    assert result["ok"] == (result["reason"] == "")
    return result


def test_result_payload_never_echoes_an_unvalidated_id() -> None:
    result = check_result(result_payload("<script>", False, "not_json", at=NOW))
    assert result == {
        "id": None,
        "ok": False,
        "reason": "not_json",
        "data": {},
        "at": "2026-11-18T11:06:40.000Z",
        "v": 1,
    }
    assert check_result(result_payload(EVENT, True, data={"n": 1}))["id"] == EVENT


def make_router(
    verifier: CommandVerifier, **handlers: Callable[[Command[Any]], Any]
) -> CommandRouter:
    return CommandRouter(
        verifier, [CommandSpec(STANDARD[name], handler) for name, handler in handlers.items()]
    )


def test_router_runs_the_handler(verifier: CommandVerifier) -> None:
    seen: list[Command[LiveArgs]] = []

    def live(command: Command[LiveArgs]) -> Data:
        seen.append(command)
        return {"streaming": True}

    router = make_router(verifier, live=live, ping=lambda c: None)
    payload = sign()
    reply = router.respond(payload)
    assert (reply.ok, reply.authenticated, reply.command_id) == (True, True, doc_of(payload)["id"])
    assert check_result(reply.payload)["data"] == {"streaming": True}
    assert seen[0].params == LiveArgs(CAM, 30)
    assert check_result(router.handle(sign("ping")))["ok"]


def test_router_hides_handler_crashes(
    verifier: CommandVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(command: Command[LiveArgs]) -> None:
        raise RuntimeError("SECRET at /etc/edge-agent/agent.yaml")

    router = make_router(
        verifier, live=boom, ping=lambda c: ["not", "a", "mapping"], ack=lambda c: {"x": object()}
    )
    with caplog.at_level(logging.ERROR, "agent.commands"):
        raw = router.handle(sign())
    assert b"SECRET" not in raw and b"Traceback" not in raw
    assert check_result(raw)["reason"] == "internal_error: the handler failed"
    assert any(r.exc_info and "SECRET" in str(r.exc_info[1]) for r in caplog.records)
    assert check_result(router.handle(sign("ping")))["reason"].startswith("internal_error")
    assert check_result(router.handle(sign("ack", {"event_id": EVENT})))["reason"].startswith(
        "internal_error"
    )


def test_router_passes_on_a_handlers_own_refusal(verifier: CommandVerifier) -> None:
    def live(command: Command[LiveArgs]) -> None:
        raise CommandRejected("unknown_camera: no such camera on this box")

    result = check_result(make_router(verifier, live=live).handle(sign()))
    assert result["reason"] == "unknown_camera: no such camera on this box"


def test_router_unsupported_and_unknown_handlers(verifier: CommandVerifier) -> None:
    router = make_router(verifier, ping=lambda c: None)
    assert check_result(router.handle(sign()))["reason"].startswith("unsupported")
    reboot = CommandType("reboot", PING.parse)
    with pytest.raises(ValueError, match="does not allow"):
        CommandRouter(verifier, [CommandSpec(reboot, lambda c: None)])


def test_router_refuses_a_handler_whose_parser_the_verifier_does_not_use(
    verifier: CommandVerifier,
) -> None:
    """A handler typed for its own parser's arguments must never get another parser's: the
    verifier parses ``live`` with STANDARD's parser, so a spec with another one is refused."""
    lax_live = CommandType("live", dict)
    with pytest.raises(ValueError, match="does not allow"):
        CommandRouter(verifier, [CommandSpec(lax_live, lambda c: None)])
    with pytest.raises(ValueError, match="two handlers"):
        CommandRouter(
            verifier, [CommandSpec(PING, lambda c: None), CommandSpec(PING, lambda c: None)]
        )


def test_router_reports_an_unsynced_clock(verifier: CommandVerifier, clock: FakeClock) -> None:
    clock.synced = False
    result = check_result(make_router(verifier, live=lambda c: {"a": 1}).handle(sign()))
    assert result["data"] == {"a": 1, "clock_unsynced": True}


def test_unauthenticated_rejections_name_no_id(verifier: CommandVerifier) -> None:
    reply = make_router(verifier).respond(forge(key=OTHER_KEY))
    assert (reply.authenticated, reply.command_id) == (False, None)
    assert check_result(reply.payload)["id"] is None


def test_rejections_never_echo_the_payload(verifier: CommandVerifier) -> None:
    marker = "zzmarkerzz"
    router = make_router(verifier, live=lambda c: None)
    for payload in (
        json.dumps(doc_of(sign()) | {marker: 1}).encode(),
        forge(args={marker: 1, "camera_id": CAM, "seconds": 30}),
        forge(args={"camera_id": marker + "/..", "seconds": 30}),
        forge(name=marker),
        forge(site_id=marker),
        json.dumps({marker: marker}).encode(),
        marker.encode(),
    ):
        assert marker.encode() not in router.handle(payload)


# --------------------------------------------------------------------------------------------------
# Fuzzing the entry point the network reaches.

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def fuzz_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CommandRouter]:
    store = NonceStore.open(tmp_path_factory.mktemp("fuzz") / "nonces.db")
    clock = FakeClock()
    specs = [CommandSpec(kind, lambda c: {"name": c.name}) for kind in STANDARD.values()]
    yield CommandRouter(make_verifier(store, clock), specs)
    store.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
command_like = st.dictionaries(
    st.sampled_from([*SIGNED_FIELDS, "sig"]) | st.text(max_size=8), json_values, max_size=10
)


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def dump(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(fuzz_router: CommandRouter, payload: bytes) -> None:
    reply = fuzz_router.respond(payload)
    assert not check_result(reply.payload)["ok"] and not reply.authenticated


@FUZZ
@given(json_values | command_like)
def test_fuzz_arbitrary_json(fuzz_router: CommandRouter, value: object) -> None:
    assert not check_result(fuzz_router.handle(dump(value)))["ok"]


@FUZZ
@given(st.data())
def test_fuzz_mutated_valid_commands(fuzz_router: CommandRouter, data: st.DataObject) -> None:
    payload = sign_command(KEY, SITE, "live", {"camera_id": CAM, "seconds": 30}, now=NOW)
    doc = doc_of(payload)
    kind = data.draw(st.sampled_from(["set", "drop", "add", "arg", "byte", "cut"]))
    if kind == "set":
        doc[data.draw(st.sampled_from(sorted(doc)))] = data.draw(json_values)
    elif kind == "drop":
        doc.pop(data.draw(st.sampled_from(sorted(doc))))
    elif kind == "add":
        doc[data.draw(st.text(max_size=8))] = data.draw(json_values)
    elif kind == "arg":
        doc["args"][data.draw(st.sampled_from(["camera_id", "seconds", "x"]))] = data.draw(
            json_values
        )
    mutated = dump(doc)
    if kind == "byte":
        at = data.draw(st.integers(0, len(payload) - 1))
        mutated = (
            payload[:at] + bytes([payload[at] ^ data.draw(st.integers(1, 255))]) + payload[at + 1 :]
        )
    elif kind == "cut":
        mutated = payload[: data.draw(st.integers(0, len(payload) - 1))]
    try:  # compared as canonical text: in Python 1.0 == 1 == True, on the wire they differ
        after = json.loads(mutated.decode("utf-8"), object_pairs_hook=no_duplicates)
        unchanged = canonical(after) == canonical(doc_of(payload))
    except ValueError:
        unchanged = False
    result = check_result(fuzz_router.handle(mutated))
    assert result["ok"] == unchanged  # only a no-op mutation (or JSON re-spelling) gets through


camera_ids = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
stamps = st.integers(0, 4_000_000_000_000)
valid_commands = st.one_of(
    st.just(("ping", {})),
    st.builds(lambda e: ("ack", {"event_id": str(e)}), st.uuids()),
    st.builds(
        lambda c, s: ("live", {"camera_id": c, "seconds": s}), camera_ids, st.integers(1, 600)
    ),
    st.builds(
        lambda c, t, span: (
            "fetch",
            {"camera_id": c, "from": rfc3339_ms(t), "to": rfc3339_ms(t + span)},
        ),
        camera_ids,
        stamps,
        st.integers(1, 3_600_000),
    ),
    st.builds(lambda m: ("test_mode", {"on": True, "minutes": m}), st.integers(1, 240)),
    st.just(("test_mode", {"on": False})),
)
safe_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=256)
generic_args = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
    st.none() | st.booleans() | st.integers(-MAX_INT, MAX_INT) | safe_text,
    max_size=16,
)


@FUZZ
@given(valid_commands, st.floats(0, 4e9), st.integers(1, 3600))
def test_property_verify_sign_round_trips(
    tmp_path: Path, command: tuple[str, dict[str, Any]], now: float, ttl: int
) -> None:
    name, args = command
    store = NonceStore.open(tmp_path / f"{uuid.uuid4()}.db")
    clock = FakeClock(now=now)
    verified = make_verifier(store, clock).verify(
        sign_command(KEY, SITE, name, args, ttl_s=ttl, now=now)
    )
    store.close()
    assert (verified.name, verified.args) == (name, args)
    assert round((verified.expires_at - verified.issued_at) * 1000) == ttl * 1000
    assert verified.params == STANDARD[name].parse(args)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(generic_args)
def test_property_canonical_form_survives_any_valid_args(
    tmp_path: Path, args: dict[str, Any]
) -> None:
    """Unicode text, big integers, null: whatever a custom command may carry verifies."""
    try:
        payload = sign_command(KEY, SITE, "custom", args, now=NOW)
    except CommandRejected as exc:  # 16 strings of 256 four-byte characters exceed 16 KB
        assume(exc.rule != "too_large")
        raise
    store = NonceStore.open(tmp_path / f"{uuid.uuid4()}.db")
    verifier = make_verifier(store, FakeClock(), commands=[CommandType("custom", dict)])
    assert verifier.verify(payload).args == args
    store.close()
