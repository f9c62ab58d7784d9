"""The frame on its own: the standard's CRC, layout and encryption, and a strict reply parser
fuzzed with random and mutated bytes (no crash, no wrong CRC or length accepted)."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.delivery.dc09.events import Event, EventKind, MessageFormat, encode
from agent.delivery.dc09.frame import (
    Address,
    FrameError,
    ReplyKind,
    build,
    crc16,
    decrypt,
    encrypt,
    format_timestamp,
    next_seq,
    parse_reply,
)

KEY = bytes(range(16))
ADDRESS = Address("1234", "1", "2")
AT = 1_796_583_408.0  # 18:56:48 on 12-06-2026, UTC


def frame_of(body: str) -> bytes:
    """A reply frame around ``body`` with a correct CRC and length."""
    raw = body.encode("ascii")
    return b"\n%04X0%03X%s\r" % (crc16(raw), len(raw), raw)


def encrypted_ack(seq: int, tail: str, key: bytes = KEY, sep: str = "|") -> bytes:
    """An encrypted ACK whose plain text is a pad of "0"s, ``sep`` and ``tail``."""
    pad = "0" * (16 - (len(tail) + len(sep)) % 16 or 16)
    plain = (pad + sep + tail).encode()
    return frame_of(f'"*ACK"{seq:04d}R1L2#1234[' + encrypt(key, plain).hex().upper())


def test_crc_is_crc16_arc() -> None:
    assert crc16(b"123456789") == 0xBB3D  # the catalogue's check value for CRC-16/ARC
    assert crc16(b"") == 0


def test_sequence_runs_0001_to_9999() -> None:
    assert next_seq(1) == 2 and next_seq(9998) == 9999 and next_seq(9999) == 1


def test_unencrypted_frame_layout() -> None:
    raw = build("SIA-DCS", 42, ADDRESS, "#1234|Nri1/PA015", extended=["LHall"], sent_at=AT)
    assert raw[:1] == b"\n" and raw[-1:] == b"\r"
    body = raw[9:-1]
    assert body == b'"SIA-DCS"0042R1L2#1234[#1234|Nri1/PA015][LHall]_18:56:48,12-06-2026'
    assert raw[1:5] == b"%04X" % crc16(body) and raw[5:9] == b"0%03X" % len(body)


def test_encrypted_frame_pads_to_blocks_and_differs_each_time() -> None:
    one = build("SIA-DCS", 1, ADDRESS, "#1234|Nri1/PA001", sent_at=AT, key=KEY)
    two = build("SIA-DCS", 1, ADDRESS, "#1234|Nri1/PA001", sent_at=AT, key=KEY)
    assert one != two  # the random pad: a zero IV must not give equal ciphertexts
    head, hexdata = one[9:-1].decode().split("[", 1)
    assert head == '"*SIA-DCS"0001R1L2#1234'
    plain = decrypt(KEY, bytes.fromhex(hexdata)).decode()
    pad, rest = plain.split("|", 1)
    assert 1 <= len(pad) <= 16 and not re.search(r"[\[\]|]", pad)
    assert rest == "#1234|Nri1/PA001]" + format_timestamp(AT)


def test_null_message() -> None:
    raw = build("NULL", 7, ADDRESS, "", sent_at=AT)
    assert raw[9:-1] == b'"NULL"0007R1L2#1234[]_18:56:48,12-06-2026'


@pytest.mark.parametrize("bad", ["#1234|Nri1/PA[1]", "Zoné", "a\rb"])
def test_nothing_can_break_a_frame_out_of_its_brackets(bad: str) -> None:
    with pytest.raises(FrameError):
        build("SIA-DCS", 1, ADDRESS, bad, sent_at=AT)
    with pytest.raises(FrameError):
        build("SIA-DCS", 1, ADDRESS, "#1234|Nri1/PA001", extended=[bad], sent_at=AT)


def test_build_refuses_what_the_standard_does_not_allow() -> None:
    with pytest.raises(FrameError, match="0001-9999"):
        build("NULL", 0, ADDRESS, "", sent_at=AT)
    with pytest.raises(FrameError, match="at most 4095"):
        build("SIA-DCS", 1, ADDRESS, "x" * 4100, sent_at=AT)
    with pytest.raises(FrameError, match="128/192/256"):
        build("NULL", 1, ADDRESS, "", sent_at=AT, key=b"short")
    with pytest.raises(FrameError, match="account"):
        Address("12")


def test_parse_ack_nak_duh() -> None:
    ack = parse_reply(frame_of('"ACK"0042R1L2#1234[]'))
    assert (ack.kind, ack.seq, ack.receiver, ack.line, ack.account) == (
        ReplyKind.ACK,
        42,
        "1",
        "2",
        "1234",
    )
    assert ack.acknowledges and ack.timestamp is None
    nak = parse_reply(frame_of('"NAK"0000R0L0A0[]_18:56:48,12-06-2026'))
    assert nak.kind is ReplyKind.NAK and nak.timestamp == AT and nak.account is None
    duh = parse_reply(frame_of('"DUH"0042R1L2#1234[]'))
    assert duh.kind is ReplyKind.DUH and not duh.acknowledges


def test_pysiaalarm_forms_are_understood() -> None:
    """Its NAK for an unparseable message has L before R; its encrypted ACK pads with "0"s
    and no "|", and may echo the key in a [K...] block. All accepted; nothing else is."""
    nak = parse_reply(frame_of('"NAK"0000L0R0A0[]_18:56:48,12-06-2026'))
    assert nak.kind is ReplyKind.NAK
    ack = parse_reply(encrypted_ack(9, "][K0123456789ABCDEF]_18:56:48,12-06-2026", sep=""), KEY)
    assert ack.acknowledges and ack.encrypted and ack.timestamp == AT
    standard = parse_reply(encrypted_ack(9, "]_18:56:48,12-06-2026"), KEY)
    assert standard.acknowledges and standard.timestamp == AT


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'"NAK"', "not a DC-09 frame"),  # pysiaalarm's answer for an unknown account
        (frame_of('"ACK"0042R1L2#1234[]').replace(b"\n", b"", 1), "not a DC-09 frame"),
        (frame_of('"ACK"0042R1L2#1234[]')[:-1] + b"\n", "not a DC-09 frame"),
        (b"\n00000014" + b'"ACK"0042R1L2#1234[]' + b"\r", "CRC mismatch"),
        (b"\n%04X0015" % crc16(b'"ACK"0042R1L2#1234[]') + b'"ACK"0042R1L2#1234[]\r', "length"),
        (frame_of('"NAK"0000R0L0A0[]'), "without the receiver's timestamp"),
        (frame_of('"NAK"0001R0L0A0[]_18:56:48,12-06-2026'), "not an ACK"),
        (frame_of('"ACK"0042R1L2#1234[]_25:00:00,12-06-2026'), "timestamp"),
        (frame_of('"ACK"0042R1L2#1234[]]'), "malformed"),
        (frame_of('"FOO"0042R1L2#1234[]'), "not an ACK"),
        (encrypted_ack(9, "]_18:56:48,12-06-2026", key=bytes(16)), "decrypt|timestamp|malformed"),
    ],
)
def test_bad_replies_are_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        parse_reply(raw, KEY)


def test_encrypted_reply_needs_our_key() -> None:
    with pytest.raises(FrameError, match="no key"):
        parse_reply(encrypted_ack(9, "]_18:56:48,12-06-2026"), None)


# --- fuzzing ------------------------------------------------------------------------------------

VALID = [
    frame_of('"ACK"0042R1L2#1234[]'),
    frame_of('"ACK"0042R1L2#1234[]_18:56:48,12-06-2026'),
    frame_of('"DUH"0042R1L2#1234[]'),
    frame_of('"RSP"0042R1L2#1234[x][Kxyz]_18:56:48,12-06-2026'),
    frame_of('"NAK"0000R0L0A0[]_18:56:48,12-06-2026'),
    frame_of('"NAK"0000L0R0A0[]_18:56:48,12-06-2026'),
    encrypted_ack(42, "]_18:56:48,12-06-2026"),
]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        parse_reply(data, KEY)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120).map(lambda b: b"\n" + b), st.sampled_from([None, KEY]))
def test_frame_shaped_garbage_never_crashes_the_parser(data: bytes, key: bytes | None) -> None:
    with contextlib.suppress(FrameError):
        parse_reply(data + b"\r", key)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_any_changed_byte_is_refused(frame: bytes, data: st.DataObject) -> None:
    """A CRC-16 catches every error burst up to 16 bits, so one changed byte anywhere in a
    valid reply (CRC field, length field, body, LF or CR) must never be accepted."""
    parse_reply(frame, KEY)  # valid as it stands
    pos = data.draw(st.integers(0, len(frame) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != frame[pos]))
    mutated = frame[:pos] + bytes([new]) + frame[pos + 1 :]
    with pytest.raises(FrameError):
        parse_reply(mutated, KEY)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.integers(0, 0xFFFF))
def test_a_wrong_crc_is_never_accepted(frame: bytes, crc: int) -> None:
    body = frame[9:-1]
    if crc == crc16(body):
        return
    with pytest.raises(FrameError, match="CRC"):
        parse_reply(b"\n%04X" % crc + frame[5:], KEY)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 9999),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="[]"),
        max_size=60,
    ),
    st.sampled_from([None, KEY, bytes(24), bytes(range(32))]),
)
def test_what_we_build_a_receiver_can_take_apart(seq: int, data: str, key: bytes | None) -> None:
    raw = build("SIA-DCS", seq, ADDRESS, data, sent_at=AT, key=key)
    body = raw[9:-1]
    assert int(raw[5:9], 16) == len(body) and int(raw[1:5], 16) == crc16(body)
    head, content = body.decode("ascii").split("[", 1)
    assert head == f'"{"*" if key else ""}SIA-DCS"{seq:04d}R1L2#1234'
    if key is not None:
        content = decrypt(key, bytes.fromhex(content)).decode("ascii").split("|", 1)[1]
    assert content == data + "]" + format_timestamp(AT)


def test_the_largest_frame_fits_one_1024_byte_read() -> None:
    """pysiaalarm reads a TCP frame with one recv(1024) (docs/dc09.md): the longest account,
    receiver, line and location, encrypted, must stay under it."""
    address = Address("0123456789ABCDEF", "FFFFFF", "FFFFFF")
    for fmt in MessageFormat:
        msg = encode(Event(EventKind.PATH_RESTORE, 999, "Щ" * 500), fmt, address.account)
        raw = build(
            msg.token, 9999, address, msg.data, extended=msg.extended, sent_at=AT, key=bytes(32)
        )
        assert len(raw) < 1024
