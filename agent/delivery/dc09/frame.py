"""The DC-09 frame: what we send, built; what the receiver answers, parsed strictly.

A frame (ANSI/SIA DC-09, section 5) is one line of ASCII::

    LF crc 0LLL "id" seq Rrcvr Lpref #acct [data] [xdata]... _HH:MM:SS,MM-DD-YYYY CR

- ``crc``: CRC-16/ARC (polynomial 0x8005, reflected, initial value 0; "CRC-16/IBM") over every
  byte from the first quote to the last byte before CR, as 4 uppercase hex digits.
- ``0LLL``: the length of the same span, a ``0`` and 3 uppercase hex digits, so at most 4095.
- ``seq``: 0001-9999, then 0001 again. A retry of a message repeats its number; a new message
  takes the next one. Replies echo it (a NAK carries 0000: it may not know which message it was).
- ``R``/``L``: the receiver number and the account prefix (line), 1-6 hex digits each;
  ``#acct``: the account, 3-16 hex digits.
- The timestamp is UTC, always sent: receivers use it against replay, and an encrypted frame
  must have it.
- Encrypted (``*`` before the id, AES-128/192/256 in CBC mode with a zero IV): everything after
  ``[`` is the hex of ``pad | data ] xdata... timestamp``. The pad is 1-16 random characters
  (never ``[``, ``]`` or ``|``) that fill the plain text to a multiple of 16 bytes; because
  the IV is zero, it is also what makes two encryptions of the same message differ.

Parsing is for the three answers a transmitter gets (ACK, NAK, DUH; RSP counts as an ACK with
data) and never accepts a frame whose CRC or length is wrong: a reply that fails any check is
a :class:`FrameError`, and the caller treats it as no reply at all. Where pysiaalarm answers in
ways the standard does not describe, the tolerance is named below and in docs/dc09.md.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from agent.errors import AgentError

MAX_LENGTH = 0xFFF  # the 0LLL field: 3 hex digits
TIMESTAMP_FORMAT = "%H:%M:%S,%m-%d-%Y"
KEY_SIZES = (16, 24, 32)  # AES-128, -192, -256
_PAD_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# What may stand inside data and extended data: printable ASCII without the brackets that
# delimit them. "|" is allowed (SIA-DCS data uses it after the account).
_FIELD = re.compile(r"[\x20-\x5a\x5c\x5e-\x7e]*\Z")


class FrameError(AgentError, ValueError):
    """A frame could not be built, or a received one is not a valid DC-09 reply."""


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/ARC as DC-09 gives it (check value: ``crc16(b"123456789") == 0xBB3D``)."""
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def next_seq(seq: int) -> int:
    """The sequence number after ``seq``: 0001-9999, never 0000 (that is the NAK's)."""
    return seq % 9999 + 1


def format_timestamp(at: float) -> str:
    """``_HH:MM:SS,MM-DD-YYYY`` in UTC, from a Unix time."""
    return "_" + datetime.fromtimestamp(at, UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> float:
    """``HH:MM:SS,MM-DD-YYYY`` (UTC, no underscore) to a Unix time."""
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise FrameError(f"not a DC-09 timestamp: {text!r}") from exc


def _aes(key: bytes) -> Cipher[modes.CBC]:
    if len(key) not in KEY_SIZES:
        raise FrameError(f"an AES key has 16, 24 or 32 bytes (128/192/256 bits), not {len(key)}")
    return Cipher(algorithms.AES(key), modes.CBC(bytes(16)))


def encrypt(key: bytes, plain: bytes) -> bytes:
    """AES-CBC with the zero IV DC-09 prescribes; ``plain`` is already a multiple of 16."""
    enc = _aes(key).encryptor()
    return enc.update(plain) + enc.finalize()


def decrypt(key: bytes, data: bytes) -> bytes:
    if len(data) % 16:
        raise FrameError("encrypted content is not a whole number of AES blocks")
    dec = _aes(key).decryptor()
    return dec.update(data) + dec.finalize()


def random_pad(n: int) -> str:
    return "".join(secrets.choice(_PAD_CHARS) for _ in range(n))


@dataclass(frozen=True, slots=True)
class Address:
    """Whom a frame is for: receiver number and line (account prefix), hex 1-6 digits; the
    account, hex 3-16 digits. Uppercase, as receivers compare them as text."""

    account: str
    receiver: str = "0"
    line: str = "0"

    def __post_init__(self) -> None:
        for name, value, lo, hi in (
            ("account", self.account, 3, 16),
            ("receiver", self.receiver, 1, 6),
            ("line", self.line, 1, 6),
        ):
            if not re.fullmatch(f"[0-9A-F]{{{lo},{hi}}}", value):
                raise FrameError(f"DC-09 {name} {value!r}: {lo}-{hi} uppercase hex digits")


def build(
    token: str,
    seq: int,
    address: Address,
    data: str,
    *,
    extended: Sequence[str] = (),
    sent_at: float,
    key: bytes | None = None,
    pad: Callable[[int], str] = random_pad,
) -> bytes:
    """One frame, LF to CR. ``token`` is ``SIA-DCS``, ``ADM-CID`` or ``NULL``; ``data`` goes
    between ``[`` and ``]`` (empty for NULL); each ``extended`` item is one ``[...]`` block
    with its identifier letter first; ``sent_at`` is the (clock-corrected) time of sending."""
    if not 1 <= seq <= 9999:
        raise FrameError(f"sequence number {seq} is outside 0001-9999")
    for text in (data, *extended):
        if not _FIELD.match(text):
            raise FrameError(f"not allowed in a DC-09 frame (ASCII without brackets): {text!r}")
    body = data + "]" + "".join(f"[{x}]" for x in extended) + format_timestamp(sent_at)
    if key is not None:
        n = 16 - (len(body) + 1) % 16 or 16  # 1-16 pad characters, then "|"
        content = encrypt(key, (pad(n) + "|" + body).encode("ascii")).hex().upper()
        token = "*" + token
    else:
        content = body
    raw = (
        f'"{token}"{seq:04d}R{address.receiver}L{address.line}#{address.account}[{content}'
    ).encode("ascii")
    if len(raw) > MAX_LENGTH:
        raise FrameError(f"a DC-09 frame holds at most {MAX_LENGTH} bytes; this one has {len(raw)}")
    return b"\n%04X0%03X%s\r" % (crc16(raw), len(raw), raw)


# --- replies ------------------------------------------------------------------------------------


class ReplyKind(enum.StrEnum):
    ACK = "ACK"  # received and accepted
    NAK = "NAK"  # rejected (often the timestamp): resynchronise the clock and resend
    DUH = "DUH"  # understood as a frame, but the receiver does not handle this message
    RSP = "RSP"  # an ACK that carries data for the transmitter


@dataclass(frozen=True, slots=True)
class Reply:
    kind: ReplyKind
    seq: int
    receiver: str | None  # None where the reply has no R field
    line: str | None
    account: str | None  # None in a NAK ("A0")
    timestamp: float | None  # the receiver's clock, if it sent one
    encrypted: bool

    @property
    def acknowledges(self) -> bool:
        return self.kind in (ReplyKind.ACK, ReplyKind.RSP)


_OUTER = re.compile(rb"\n([0-9A-F]{4})0([0-9A-F]{3})(.*)\r\Z", re.S)
_ANSWER = re.compile(
    r'"(\*?)(ACK|DUH|RSP)"(\d{4})(?:R([0-9A-F]{1,6}))?L([0-9A-F]{1,6})'
    r"#([0-9A-F]{3,16})\[(.*)\Z",
    re.S,
)
# The NAK of DC-09 is ``"NAK"0000R0L0A0[]_timestamp``. pysiaalarm writes L before R when it
# could not parse the message at all: accepted (the fields say nothing in a NAK), nothing else.
_NAK = re.compile(
    r'"NAK"0000(?:R([0-9A-F]{1,6}?)L([0-9A-F]{1,6}?)|L([0-9A-F]{1,6}?)'
    r"R([0-9A-F]{1,6}?))A0\[(.*)\Z",
    re.S,
)
_TAIL = re.compile(r"([^\[\]]*)\]((?:\[[^\[\]]*\])*)(?:_(\d\d:\d\d:\d\d,\d\d-\d\d-\d{4}))?\Z")
# Decrypted: the pad, then "|". pysiaalarm pads with "0"s and leaves the "|" out: tolerated.
_PAD = re.compile(r"[^|\[\]]*\|?")
_HEX = re.compile(r"(?:[0-9A-F]{32})+\Z")


def parse_reply(raw: bytes, key: bytes | None = None) -> Reply:
    """One received frame, LF to CR, checked: CRC, length, layout, decryption with ``key``
    for an encrypted reply. Anything else raises :class:`FrameError` saying what was wrong."""
    outer = _OUTER.match(raw)
    if outer is None:
        raise FrameError(f"not a DC-09 frame: {raw[:80]!r}")
    crc, length, body = int(outer[1], 16), int(outer[2], 16), outer[3]
    if length != len(body):
        raise FrameError(f"length field says {length} bytes, the frame has {len(body)}")
    if crc16(body) != crc:
        raise FrameError(f"CRC mismatch: frame says {crc:04X}, content gives {crc16(body):04X}")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FrameError("a DC-09 frame is ASCII; this one is not") from exc
    if (nak := _NAK.match(text)) is not None:
        at = _timestamp_of(nak[5])
        if at is None:
            raise FrameError("a NAK without the receiver's timestamp")
        return Reply(
            ReplyKind.NAK, 0, nak[1] or nak[4], nak[2] or nak[3], None, at, encrypted=False
        )
    ans = _ANSWER.match(text)
    if ans is None:
        raise FrameError(f"not an ACK, NAK, DUH or RSP: {text[:80]!r}")
    star, kind, seq, receiver, line, account, rest = ans.groups()
    if star:
        if key is None:
            raise FrameError("an encrypted reply, but this receiver has no key configured")
        if not _HEX.match(rest):
            raise FrameError("encrypted content is not hex in whole AES blocks")
        try:
            plain = decrypt(key, bytes.fromhex(rest)).decode("ascii")
        except UnicodeDecodeError as exc:
            raise FrameError("the reply does not decrypt with our key (a different key?)") from exc
        pad = _PAD.match(plain)
        assert pad is not None  # the pattern matches the empty string
        at = _timestamp_of(plain[pad.end() :])
        if at is None:
            raise FrameError("an encrypted reply without a timestamp (the key may differ)")
    else:
        at = _timestamp_of(rest)
    return Reply(ReplyKind(kind), int(seq), receiver, line, account, at, encrypted=bool(star))


def _timestamp_of(rest: str) -> float | None:
    """``data ] [xdata]... _timestamp``, checked; the receiver's time, if it sent one. The data
    and extended data of a reply are not used (pysiaalarm may echo the key there: not read)."""
    tail = _TAIL.match(rest)
    if tail is None:
        raise FrameError(f"malformed data or timestamp: {rest[:80]!r}")
    return parse_timestamp(tail[3]) if tail[3] else None
