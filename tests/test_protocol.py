"""The wire schemas: everything the box's encoders make passes, and what a hostile box makes
of the same fields is refused by name, before anything else looks at it."""

from __future__ import annotations

import hashlib
import json
import string
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import __version__
from agent.clock import rfc3339
from agent.delivery.framing import clip_chunks, live_chunks
from agent.delivery.protocol import (
    ITEM_ID,
    MAX_CHUNK_DATA,
    MAX_DETAIL_CHARS,
    MAX_LABEL_CHARS,
    SITE_ID,
    Alarm,
    BoxTopic,
    Status,
    Topics,
    decode_chunk,
    parse_alarm,
    parse_box_topic,
    parse_status,
)
from agent.delivery.schema import WireError
from agent.logs import UNSAFE_CHARS
from agent.video.clips import ClipSegment
from agent.video.segmenter import Segment
from agent.video.store import SegmentRef

sites = st.from_regex(SITE_ID, fullmatch=True)
items = st.from_regex(ITEM_ID, fullmatch=True)
labels = (
    st.text(
        st.characters(codec="utf-8").filter(lambda c: not UNSAFE_CHARS.match(c)),
        min_size=1,
        max_size=MAX_LABEL_CHARS,
    )
    .map(str.strip)
    .filter(bool)
)
times = st.floats(0, 4_102_444_800)  # up to 2100


def good_alarm(**changes: Any) -> dict[str, Any]:
    alarm = {
        "event_id": str(uuid.uuid4()),
        "seq": 17,
        "site_id": "school-042",
        "button_id": "entrance",
        "location": "Главный вход, 1 этаж",
        "kind": "panic",
        "pressed_at": "2026-11-25T08:01:02.345Z",
        "clock_synced": True,
        "test": False,
        "detail": "",
        "v": 1,
    }
    return {**alarm, **changes}


@settings(max_examples=300)
@given(
    sites,
    st.one_of(st.just(""), items),
    labels,
    st.text(),
    times,
    st.integers(1, 2**53 - 1),
    st.booleans(),
)
def test_every_alarm_the_box_can_make_passes(
    site: str, button: str, location: str, detail: str, at: float, seq: int, test: bool
) -> None:
    """Ids and labels as the config validator allows them; detail is anything at all (the box
    builds it at run time, and its encoder makes it fit)."""
    alarm = Alarm(
        event_id=str(uuid.uuid4()),
        seq=seq,
        site_id=site,
        button_id=button,
        location=location,
        kind="fault",
        pressed_at=rfc3339(at),
        clock_synced=False,
        test=test,
        detail=detail,
    )
    parsed = parse_alarm(alarm.to_json())
    assert (parsed.site_id, parsed.location, parsed.seq) == (site, location, seq)
    assert len(parsed.detail) <= MAX_DETAIL_CHARS


@settings(max_examples=100)
@given(
    sites, st.one_of(st.none(), times), st.sampled_from(["", "connection lost", "agent stopped"])
)
def test_every_status_the_box_can_make_passes(site: str, until: float | None, reason: str) -> None:
    status = Status(
        state="online",
        site_id=site,
        at=rfc3339(1.8e9),
        agent_version=__version__,
        reason=reason,
        test_mode_until=rfc3339(until) if until is not None else None,
    )
    assert parse_status(status.to_json()) == status


@settings(max_examples=100)
@given(
    items,
    st.binary(min_size=1, max_size=40_000),
    st.integers(1, 20_000),
    st.booleans(),
    st.integers(0, 9_999),
)
def test_every_chunk_the_box_can_make_passes(
    camera: str, data: bytes, chunk_bytes: int, final: bool, position: int
) -> None:
    sha = hashlib.sha256(data).hexdigest()
    segment = Segment(camera, 3, 1.8e9, 1.8e9 + 2, 2.0, data, sha, 1, "0" * 64, "1" * 64)
    for payload in live_chunks(f"live-{uuid.uuid4()}", segment, position, final, chunk_bytes):
        header, body = decode_chunk(payload, live=True)
        assert header.camera_id == camera and body
    ref = SegmentRef(Path("/nonexistent"), sha, len(data), 1.8e9, 1.8e9 + 2, 3)
    cs = ClipSegment(
        f"fetch-{uuid.uuid4()}", camera, position, final, ref, False, "0" * 64, "1" * 64
    )
    for _prio, _topic, _key, head, blob in clip_chunks(
        Topics("schools", "s"), cs, chunk_bytes, sig="A" * 86 + "=="
    ):
        assert blob is not None
        decode_chunk(head + data[blob.offset : blob.offset + blob.length])


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"seq": "zzz"}, "bad_field: seq"),  # issue 10.2: poisoned the ledger's MAX(seq)
        ({"seq": True}, "bad_field: seq"),  # a bool is not an integer
        ({"seq": 17.0}, "bad_field: seq"),
        ({"seq": 0}, "bad_field: seq"),
        ({"button_id": "a" * 100_000}, "too_large"),  # issue 10.1: stalled the log formatter
        ({"button_id": "Entrance"}, "bad_field: button_id"),
        ({"location": "x\x00<2>ALARM site=school-043"}, "bad_field: location"),  # issue 10.5
        ({"location": "hall\x1b[2J"}, "bad_field: location"),
        ({"location": "hall\u2028"}, "bad_field: location"),
        ({"location": "hall\u202e"}, "bad_field: location"),
        ({"location": "x" * (MAX_LABEL_CHARS + 1)}, "bad_field: location"),
        ({"location": ""}, "bad_field: location"),
        ({"event_id": "../../etc"}, "bad_field: event_id"),
        ({"event_id": str(uuid.uuid4()).upper()}, "bad_field: event_id"),
        ({"kind": "PANIC"}, "bad_field: kind"),
        ({"pressed_at": "2026-02-30T08:00:00.000Z"}, "bad_field: pressed_at"),
        ({"test": 1}, "bad_field: test"),
        ({"v": 2}, "bad_field: v"),
        ({"extra": 1}, "unknown_field"),
    ],
)
def test_a_hostile_alarm_is_refused_by_name(change: dict[str, Any], rule: str) -> None:
    with pytest.raises(WireError) as info:
        parse_alarm(json.dumps(good_alarm(**change)).encode())
    assert str(info.value).startswith(rule)
    assert "zzz" not in str(info.value) and "ALARM" not in str(info.value)  # never quoted


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        (b'{"seq":1,"seq":2}', "not_json"),
        (b'{"seq":NaN}', "not_json"),
        (b"\xff{}", "not_json"),
        (b"[" * 3000 + b"]" * 3000, "too_large"),
        (b"[" * 2000 + b"]" * 2000, "not_json"),
        (b"[]", "not_object"),
        (
            json.dumps({k: v for k, v in good_alarm().items() if k != "seq"}).encode(),
            "missing_field",
        ),
    ],
)
def test_malformed_json_is_refused(payload: bytes, rule: str) -> None:
    with pytest.raises(WireError) as info:
        parse_alarm(payload)
    assert info.value.rule == rule


def _chunk(**changes: Any) -> tuple[dict[str, Any], bytes]:
    header = {
        "event_id": str(uuid.uuid4()),
        "camera_id": "cam",
        "segment": 0,
        "final": True,
        "chunk": 0,
        "chunks": 1,
        "sha256": "a" * 64,
        "size": 3,
        "start": "2026-11-25T08:00:00.000Z",
        "end": "2026-11-25T08:00:02.000Z",
        "v": 1,
    }
    return {**header, **changes}, b"abc"


@pytest.mark.parametrize(
    ("change", "data", "rule"),
    [
        ({"chunks": 10**9}, b"abc", "bad_field: chunks"),  # issue 10.3: never completes
        ({"chunks": 2, "size": 1}, b"a", "bad_chunk"),  # more chunks than bytes
        ({"chunks": 1, "size": MAX_CHUNK_DATA + 1}, b"a", "bad_chunk"),  # more than chunks carry
        ({"chunk": 1}, b"abc", "bad_chunk"),
        ({}, b"", "bad_chunk"),
        ({}, b"abcd", "bad_chunk"),  # more bytes than the segment
        ({"event_id": "../x"}, b"abc", "bad_field: event_id"),
        ({"segment": -1}, b"abc", "bad_field: segment"),
        ({"sha256": "A" * 64}, b"abc", "bad_field: sha256"),
    ],
)
def test_a_hostile_chunk_is_refused(change: dict[str, Any], data: bytes, rule: str) -> None:
    header, _ = _chunk(**change)
    with pytest.raises(WireError) as info:
        decode_chunk(json.dumps(header).encode() + b"\n" + data)
    assert str(info.value).startswith(rule)


def test_a_chunk_header_line_is_found_within_its_limit() -> None:
    with pytest.raises(WireError, match="no header line"):
        decode_chunk(b"x" * 100_000 + b"\n" + b"data")
    header, data = _chunk()
    assert decode_chunk(json.dumps(header).encode() + b"\n" + data)[1] == b"abc"


@pytest.mark.parametrize(
    ("prefix", "topic", "parsed"),
    [
        ("police/schools", "police/schools/live/alarm", BoxTopic("live", "alarm")),  # issue 10.7
        ("police/schools", "police/schools/clip/alarm", BoxTopic("clip", "alarm")),
        ("police/schools", "police/schools/live/clip/alarm", BoxTopic("live", "clip", "alarm")),
        ("police/schools", "police/schools/clip/live/cam-1", BoxTopic("clip", "live", "cam-1")),
        ("schools", "schools/school-042/status", BoxTopic("school-042", "status")),
        ("schools", "schools/school-042/pubkey", BoxTopic("school-042", "pubkey")),
    ],
)
def test_topics_are_parsed_from_the_front(prefix: str, topic: str, parsed: BoxTopic) -> None:
    assert parse_box_topic(prefix, topic) == parsed


@pytest.mark.parametrize(
    "topic",
    [
        "schools/school-042/alarm/x",
        "other/school-042/alarm",
        "schools/School/alarm",
        "schools/school-042/clip",
        "schools/school-042/clip/../x",
        "schools/_centre/alarm",
        "schools/school-042/cmd",
        "schools/" + "/".join(string.ascii_lowercase),
    ],
)
def test_other_topics_are_refused(topic: str) -> None:
    with pytest.raises(WireError):
        parse_box_topic("schools", topic)
