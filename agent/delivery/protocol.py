"""The MQTT contract with the centre (ЦОУ): topics, payloads, priorities.

Everything that goes on the wire is built and parsed here, so docs/protocol.md has one place to
agree with. Payloads are compact UTF-8 JSON; a clip chunk is a JSON header line followed by the
raw bytes, so it needs no base64 (a third more bytes on a 1 Mbit/s uplink) and no MQTT 5.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from agent.errors import ProtocolError

PROTOCOL_VERSION = 1


class Priority(enum.IntEnum):
    """Outbox classes, strictly ordered: a lower value always goes first."""

    ALARM = 0
    CONTROL = 1  # status, command results, health
    LIVE = 2
    CLIP = 3


class AlarmKind(enum.StrEnum):
    PANIC = "panic"
    FAULT = "fault"  # stuck button, cut loop restored, camera lost, outbox evicted
    RESTORE = "restore"  # a fault cleared


@dataclass(frozen=True, slots=True)
class Topics:
    """The per-site topic tree; built once from the config so no code formats topics by hand."""

    prefix: str
    site_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def alarm(self) -> str:
        return f"{self.base}/alarm"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    @property
    def cmd_result(self) -> str:
        return f"{self.base}/cmd/result"

    @property
    def receipt(self) -> str:
        return f"{self.base}/receipt"

    @property
    def presence(self) -> str:
        """Every receiver's retained presence (a wildcard); '_' keeps it apart from site ids."""
        return centre_presence_topic(self.prefix, "+")

    @property
    def pubkey(self) -> str:
        return f"{self.base}/pubkey"

    def clip(self, camera_id: str) -> str:
        return f"{self.base}/clip/{camera_id}"

    def live(self, camera_id: str) -> str:
        return f"{self.base}/live/{camera_id}"


def centre_presence_topic(prefix: str, receiver_id: str) -> str:
    """One topic per receiver, so one of several stopping does not hide the others."""
    return f"{prefix}/_centre/presence/{receiver_id}"


def rfc3339(ts: float) -> str:
    """UTC with milliseconds and a Z, the one timestamp format on the wire."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    """A random UUID: unique across boxes without coordination, and stable across retries
    because it is stored with the alarm before the first send."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Alarm:
    """One alarm or fault event as the centre receives it on ``…/alarm``."""

    event_id: str
    seq: int
    site_id: str
    button_id: str
    location: str
    kind: str
    pressed_at: str
    clock_synced: bool
    test: bool = False
    detail: str = ""
    v: int = PROTOCOL_VERSION

    def to_json(self) -> bytes:
        return dumps(asdict(self))


@dataclass(frozen=True, slots=True)
class Status:
    """Retained on ``…/status``; the MQTT will carries the offline form."""

    state: str  # online | offline
    site_id: str
    at: str
    agent_version: str
    reason: str = ""
    test_mode_until: str | None = None  # a walk test is on: alarms carry "test": true
    v: int = PROTOCOL_VERSION

    def to_json(self) -> bytes:
        return dumps(asdict(self))


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def parse_alarm(payload: bytes) -> Alarm:
    """For the receiver and the tests: refuse anything that is not an alarm of this protocol."""
    try:
        data = json.loads(payload)
        return Alarm(**data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"not an alarm payload: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Receipt:
    """The centre's end-to-end confirmation, on ``…/receipt``: it has stored these."""

    alarms: tuple[str, ...] = ()  # event ids
    clips: tuple[tuple[str, str], ...] = ()  # (event_id, camera_id): the whole clip verified
    v: int = PROTOCOL_VERSION

    def to_json(self) -> bytes:
        return dumps({"alarms": list(self.alarms),
                      "clips": [{"event_id": e, "camera_id": c} for e, c in self.clips],
                      "v": self.v})


def parse_receipt(payload: bytes) -> Receipt:
    try:
        data = json.loads(payload)
        alarms = tuple(str(a) for a in data.get("alarms", []))
        clips = tuple((str(c["event_id"]), str(c["camera_id"])) for c in data.get("clips", []))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ProtocolError(f"not a receipt: {exc}") from exc
    return Receipt(alarms, clips)


def presence_payload(state: str, at: float) -> bytes:
    return dumps({"state": state, "at": rfc3339(at), "v": PROTOCOL_VERSION})


# --- clip chunks ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """Enough to rebuild and verify a clip from chunks arriving in any order, with duplicates."""

    event_id: str
    camera_id: str
    segment: int  # position of the segment in the clip, 0-based
    final: bool  # this is the clip's last segment
    chunk: int  # position of the chunk in the segment, 0-based
    chunks: int  # how many chunks the segment has
    sha256: str  # of the whole segment
    size: int  # bytes of the whole segment
    start: str  # segment start, RFC 3339
    end: str
    prev: str = ""  # the hash chain: see agent/chain.py and docs/protocol.md
    link: str = ""
    sig: str = ""  # on the final segment: the box's signature over the whole clip
    v: int = PROTOCOL_VERSION

    @property
    def message_id(self) -> str:
        return f"{self.event_id}/{self.camera_id}/{self.segment}/{self.chunk}"


def encode_chunk(header: ChunkHeader, data: bytes) -> bytes:
    return dumps(asdict(header)) + b"\n" + data


def decode_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    head, sep, data = payload.partition(b"\n")
    if not sep:
        raise ProtocolError("clip chunk without a header line")
    try:
        header = ChunkHeader(**json.loads(head))
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"bad clip chunk header: {exc}") from exc
    if not 0 <= header.chunk < header.chunks or header.segment < 0:
        raise ProtocolError(f"clip chunk position out of range: {header.message_id}")
    return header, data


# --- the clock ----------------------------------------------------------------------------------

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised


def clock_synced() -> bool:
    """True once the kernel says NTP (any daemon) has synchronised the clock.

    A Pi has no RTC: until then the wall clock may be days off, and the centre must know not to
    trust ``pressed_at``. adjtimex() with modes=0 only reads, so it needs no privilege.
    """
    libc = _libc()
    if libc is None:
        return False
    buf = ctypes.create_string_buffer(1024)  # larger than struct timex on every ABI; modes=0
    return libc.adjtimex(buf) not in (-1, _TIME_ERROR)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None
