"""A command's envelope on the wire: the checks it meets before its signature, what the
signature covers, and the result the box answers with (docs/commands.md, "Command", "Result").

The checks run in an order that names the real fault and never quotes the payload: size first,
strict JSON, exactly the nine fields, then each field's type and form. What passes is an
:class:`Envelope` whose ``signed`` bytes are rebuilt from the parsed values, so key order and
whitespace on the wire do not matter and any change to a value breaks the signature.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agent.clock import parse_rfc3339, rfc3339
from agent.delivery.protocol import SITE_ID, UUID
from agent.delivery.schema import WireError, load_object
from agent.errors import AgentError

COMMAND_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 16 * 1024
MAX_LIFETIME_S: Final = 3600.0  # from issued_at to expires_at
MAX_ARGS: Final = 16
MAX_STRING_CHARS: Final = 256
MAX_INT: Final = 2**53 - 1  # exact in every JSON implementation, JavaScript's included
# Prefixed to the signed bytes: a signature made with the centre's key for any other purpose
# (a future signed config, say) can never be taken for a command, nor the reverse.
SIGNING_CONTEXT: Final = b"edge-agent/command/v1\n"
SIGNED_FIELDS: Final = ("id", "site_id", "name", "args", "issued_at", "expires_at", "nonce", "v")

NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")  # command and argument names
_NONCE = re.compile(r"[0-9a-f]{32}")
_SIG_CHARS = 88  # base64 of 64 bytes, padded
# C0, DEL, C1 controls and lone surrogates: the characters JSON libraries escape differently
# (or cannot encode at all), so the canonical text would not be canonical.
_UNSAFE_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_REASON_MAX = 200

Scalar = str | int | bool | None


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


@dataclass(frozen=True, slots=True)
class Envelope:
    """A command whose form is right and whose signature is yet to be checked."""

    id: str
    site_id: str
    name: str
    args: dict[str, Scalar]
    issued_at: float  # seconds since the epoch
    expires_at: float
    nonce: str
    sig: bytes  # the 64 bytes of the Ed25519 signature
    signed: bytes  # what ``sig`` must be the signature of


def read_envelope(payload: object) -> Envelope:
    """Size first, strict UTF-8 and JSON, an object (the rules every untrusted message meets,
    agent/delivery/schema.py), then exactly the command's fields, each of its form."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CommandRejected("not_json: the payload must be bytes")
    try:
        doc = load_object(payload, MAX_PAYLOAD_BYTES, "a command")
    except WireError as exc:
        raise CommandRejected(str(exc)) from None
    return check_structure(doc)


def signing_bytes(fields: Mapping[str, object]) -> bytes:
    """What the signature covers: the context line, then every field but ``sig`` as compact JSON
    with sorted keys and UTF-8 text (not \\u escapes). Implementations in other languages must
    produce these exact bytes; docs/commands.md spells out why that is easy for valid commands."""
    body = {key: value for key, value in fields.items() if key != "sig"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return SIGNING_CONTEXT + text.encode("utf-8")


def check_args(value: object) -> dict[str, Scalar]:
    """The rules every command's args follow, whatever the name: a flat object of scalars."""
    if not isinstance(value, dict):
        raise CommandRejected("bad_field: args must be an object")
    if len(value) > MAX_ARGS:
        raise CommandRejected(f"bad_args: at most {MAX_ARGS} arguments")
    out: dict[str, Scalar] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not NAME.fullmatch(key):
            raise CommandRejected("bad_args: argument names are [a-z][a-z0-9_], at most 32")
        if isinstance(item, str):
            if len(item) > MAX_STRING_CHARS or _UNSAFE_CHAR.search(item):
                raise CommandRejected(
                    f"bad_args: strings are at most {MAX_STRING_CHARS}"
                    " characters, without control characters"
                )
        elif isinstance(item, float):
            raise CommandRejected("bad_args: numbers must be integers")
        elif isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > MAX_INT:
                raise CommandRejected("bad_args: integers must be within +-(2^53 - 1)")
        elif item is not None and not isinstance(item, bool):
            raise CommandRejected("bad_args: values must be strings, integers, booleans or null")
        out[key] = item
    return out


def check_structure(doc: dict[str, object]) -> Envelope:
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
    command_id = _text_field(doc, "id", UUID, "a lower-case UUID")
    site_id = _text_field(doc, "site_id", SITE_ID, "a site id")
    name = _text_field(doc, "name", NAME, "a command name ([a-z][a-z0-9_], at most 32)")
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
    return Envelope(
        command_id, site_id, name, args, issued_at, expires_at, nonce, raw, signing_bytes(doc)
    )  # doc now holds exactly the fields checked above


def _text_field(doc: Mapping[str, object], key: str, pattern: re.Pattern[str], rule: str) -> str:
    value = doc[key]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise CommandRejected(f"bad_field: {key} must be {rule}")
    return value


def _time_field(doc: Mapping[str, object], key: str) -> float:
    parsed = parse_rfc3339(doc[key])
    if parsed is None:
        raise CommandRejected(
            f"bad_field: {key} must be RFC 3339 UTC with milliseconds such as"
            " 2026-11-25T08:00:00.000Z"
        )
    return parsed


def result_payload(
    command_id: str | None,
    ok: bool,
    reason: str = "",
    data: Mapping[str, object] | None = None,
    *,
    at: float | None = None,
) -> bytes:
    """The JSON answer on ``…/cmd/result``. An id that is not a UUID is sent as null: nothing
    from the payload is echoed but a validated id."""
    safe_id = command_id if isinstance(command_id, str) and UUID.fullmatch(command_id) else None
    body = {
        "id": safe_id,
        "ok": bool(ok),
        "reason": str(reason)[:_REASON_MAX],
        "data": dict(data) if data else {},
        "at": rfc3339(time.time() if at is None else at),
        "v": COMMAND_VERSION,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )
