"""The MQTT contract with the centre (ЦОУ): topics, payloads, priorities.

Everything that goes on the wire is built and parsed here, so docs/protocol.md has one place to
agree with. Payloads are compact UTF-8 JSON; a clip chunk is a JSON header line followed by the
raw bytes, so it needs no base64 (a third more bytes on a 1 Mbit/s uplink) and no MQTT 5.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from agent.clock import rfc3339
from agent.delivery.schema import (
    Bool,
    Int,
    Nullable,
    OneOf,
    Schema,
    Text,
    Timestamp,
    WireError,
)
from agent.errors import ProtocolError
from agent.logs import escape

PROTOCOL_VERSION = 1

# --- what the box sends, exactly: the limits of docs/protocol.md ("Field rules") --------------
# The box cannot exceed them: the config validator (agent/config/schema.py) holds ids and labels
# to the same patterns and lengths, and the encoders below clamp what the box itself writes
# (detail).

SITE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ITEM_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # button and camera ids
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID = re.compile(_UUID)
CLIP_ID = re.compile(f"(?:fetch-)?{_UUID}")  # an alarm's event id, or a fetch's clip id
LIVE_SESSION = re.compile(f"live-{_UUID}|always")
_HEX64 = re.compile("[0-9a-f]{64}")
_CHAIN = re.compile("(?:[0-9a-f]{64})?")
_SIG = re.compile("(?:[A-Za-z0-9+/]{86}==)?")  # base64 of an Ed25519 signature (64 bytes)
_VERSION = re.compile(r"[0-9A-Za-z.+_-]{1,32}")

MAX_LABEL_CHARS = 200  # a button's location, a site's name: free text in any script
MAX_DETAIL_CHARS = 500
MAX_SEQ = 2**53 - 1  # exact in every JSON implementation
MAX_ALARM_BYTES = 4096  # the longest alarm the box can make is about 3 KB
MAX_STATUS_BYTES = 1024
MAX_PUBKEY_BYTES = 1024
MAX_HEADER_BYTES = 1024  # a chunk's JSON header line
MAX_CHUNK_DATA = 256 * 1024  # a chunk's bytes (the box sends 4 to 128 KB: docs/uplink.md)
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
MAX_CHUNKS = 4096  # per segment
MAX_CLIP_SEGMENTS = 10_000  # 7,200 would be an hour of 0.5 s segments


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


@dataclass(frozen=True, slots=True)
class BoxTopic:
    """What a topic a box publishes on says: whose it is, what kind, which camera."""

    site: str
    kind: str  # status, alarm, health, pubkey, clip, live
    camera: str = ""


_SITE_KINDS = frozenset({"status", "alarm", "health", "pubkey"})
_CAMERA_KINDS = frozenset({"clip", "live"})


def parse_box_topic(prefix: str, topic: str) -> BoxTopic:
    """Parsed from the front: the prefix exactly (it may have several levels, such as
    ``police/schools``), then the site, then the kind. From the end, a site named ``live`` or
    ``clip`` was taken for a kind and its alarms dropped or filed under another site."""
    if not topic.startswith(prefix + "/"):
        raise WireError("bad_topic", f"not under {prefix}/")
    parts = topic[len(prefix) + 1 :].split("/")
    if not SITE_ID.fullmatch(parts[0]):
        raise WireError("bad_topic", "the level after the prefix must be a site id")
    if len(parts) == 2 and parts[1] in _SITE_KINDS:
        return BoxTopic(parts[0], parts[1])
    if len(parts) == 3 and parts[1] in _CAMERA_KINDS and ITEM_ID.fullmatch(parts[2]):
        return BoxTopic(parts[0], parts[1], parts[2])
    raise WireError("bad_topic", "not a topic a box publishes on (docs/protocol.md)")


def centre_presence_topic(prefix: str, receiver_id: str) -> str:
    """One topic per receiver, so one of several stopping does not hide the others."""
    return f"{prefix}/_centre/presence/{receiver_id}"


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
        """The box's encoder: ``detail`` is the one field built at run time (it may quote a
        path), so it is made to fit the schema here; ids and labels come from the validated
        config."""
        detail = escape(self.detail)[:MAX_DETAIL_CHARS]
        return dumps({**asdict(self), "detail": detail})


_TEXT = "text without control characters"
ALARM = Schema(
    "an alarm",
    MAX_ALARM_BYTES,
    {
        "event_id": Text("a lower-case UUID", 36, pattern=UUID),
        "seq": Int(1, MAX_SEQ),
        "site_id": Text("a site id", 63, pattern=SITE_ID),
        "button_id": Text(
            "empty or a button id", 63, pattern=re.compile(f"(?:{ITEM_ID.pattern})?")
        ),
        "location": Text(f"{_TEXT}, 1 to {MAX_LABEL_CHARS} characters", MAX_LABEL_CHARS, 1),
        "kind": OneOf(frozenset(k.value for k in AlarmKind)),
        "pressed_at": Timestamp(),
        "clock_synced": Bool(),
        "test": Bool(),
        "detail": Text(f"{_TEXT}, at most {MAX_DETAIL_CHARS} characters", MAX_DETAIL_CHARS),
        "v": Int(PROTOCOL_VERSION, PROTOCOL_VERSION),
    },
)


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


STATUS = Schema(
    "a status",
    MAX_STATUS_BYTES,
    {
        "state": OneOf(frozenset({"online", "offline"})),
        "site_id": Text("a site id", 63, pattern=SITE_ID),
        "at": Timestamp(),
        "agent_version": Text("a version such as 0.1.0", 32, pattern=_VERSION),
        "reason": Text(f"{_TEXT}, at most {MAX_LABEL_CHARS} characters", MAX_LABEL_CHARS),
        "v": Int(PROTOCOL_VERSION, PROTOCOL_VERSION),
    },
    optional={"test_mode_until": Nullable(Timestamp())},
)


def parse_alarm(payload: bytes) -> Alarm:
    """Refuse, with WireError, anything that is not exactly an alarm of this protocol."""
    return Alarm(**ALARM.decode(payload))  # type: ignore[arg-type]  # types checked by ALARM


def parse_status(payload: bytes) -> Status:
    """Refuse, with WireError, anything that is not exactly a status of this protocol."""
    return Status(**STATUS.decode(payload))  # type: ignore[arg-type]  # types checked by STATUS


@dataclass(frozen=True, slots=True)
class Receipt:
    """The centre's end-to-end confirmation, on ``…/receipt``: it has stored these."""

    alarms: tuple[str, ...] = ()  # event ids
    clips: tuple[tuple[str, str], ...] = ()  # (event_id, camera_id): the whole clip verified
    v: int = PROTOCOL_VERSION

    def to_json(self) -> bytes:
        return dumps(
            {
                "alarms": list(self.alarms),
                "clips": [{"event_id": e, "camera_id": c} for e, c in self.clips],
                "v": self.v,
            }
        )


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
    prev: str = ""  # the hash chain: see agent/video/chain.py and docs/protocol.md
    link: str = ""
    sig: str = ""  # on the final segment: the box's signature over the whole clip
    v: int = PROTOCOL_VERSION

    @property
    def message_id(self) -> str:
        return f"{self.event_id}/{self.camera_id}/{self.segment}/{self.chunk}"


def _chunk_schema(what: str, event_id: Text, segment: Int) -> Schema:
    return Schema(
        what,
        MAX_HEADER_BYTES,
        {
            "event_id": event_id,
            "camera_id": Text("a camera id", 63, pattern=ITEM_ID),
            "segment": segment,
            "final": Bool(),
            "chunk": Int(0, MAX_CHUNKS - 1),
            "chunks": Int(1, MAX_CHUNKS),
            "sha256": Text("64 lower-case hex digits", 64, pattern=_HEX64),
            "size": Int(1, MAX_SEGMENT_BYTES),
            "start": Timestamp(),
            "end": Timestamp(),
            "v": Int(PROTOCOL_VERSION, PROTOCOL_VERSION),
        },
        optional={
            "prev": Text("empty or 64 lower-case hex digits", 64, pattern=_CHAIN),
            "link": Text("empty or 64 lower-case hex digits", 64, pattern=_CHAIN),
            "sig": Text("empty or the base64 of 64 bytes", 88, pattern=_SIG),
        },
    )


CLIP_CHUNK = _chunk_schema(
    "a clip chunk header",
    Text("an alarm's event id or fetch-{command id}", 42, pattern=CLIP_ID),
    Int(0, MAX_CLIP_SEGMENTS - 1),
)
LIVE_CHUNK = _chunk_schema(
    "a live chunk header",
    Text("live-{command id} or always", 41, pattern=LIVE_SESSION),
    Int(0, MAX_SEQ),
)


def encode_chunk(header: ChunkHeader, data: bytes) -> bytes:
    return dumps(asdict(header)) + b"\n" + data


def decode_chunk(payload: bytes, live: bool = False) -> tuple[ChunkHeader, bytes]:
    """A clip (or live) chunk: its header checked by CLIP_CHUNK (LIVE_CHUNK), and its
    position and length against the header, so a segment can neither be promised larger than
    its chunks can carry nor hold more chunks than bytes."""
    end = payload.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if end < 0:
        raise WireError("bad_chunk", f"no header line within {MAX_HEADER_BYTES} bytes")
    fields = (LIVE_CHUNK if live else CLIP_CHUNK).decode(payload[:end])
    header = ChunkHeader(**fields)  # type: ignore[arg-type]  # types checked by the schema
    data = payload[end + 1 :]
    if header.chunk >= header.chunks or header.chunks > header.size:
        raise WireError("bad_chunk", "chunk must be below chunks, chunks at most size")
    if header.size > header.chunks * MAX_CHUNK_DATA:
        raise WireError("bad_chunk", f"size exceeds chunks x {MAX_CHUNK_DATA} bytes")
    if not 1 <= len(data) <= min(MAX_CHUNK_DATA, header.size):
        raise WireError("bad_chunk", f"a chunk carries 1 to {MAX_CHUNK_DATA} bytes, at most size")
    return header, data
