"""Our transmitter against pysiaalarm: what a centre running it would decode, over TCP and UDP,
with and without AES; the NAK path (clock, key, account); restarts; fallback to the backup.

pysiaalarm takes its AES key as text and uses the ASCII bytes of that text as the key
(docs/dc09.md, deviations): so the key we configure is ``text.encode()``.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

pytest.importorskip("pysiaalarm", reason="pip install -e '.[dc09]' (pysiaalarm, the receiver)")

from pysiaalarm import SIAEvent

from agent.delivery.dc09.events import MAPPING, Event, EventKind, MessageFormat
from agent.delivery.dc09.settings import Transport
from agent.delivery.dc09.translit import location_text
from agent.testing.sia import ACCOUNT, SiaReceiver
from tests.dc09.conftest import Harness, settings

LOCATION = "Главный вход, 1 этаж — Қабылдау бөлмесі [№3]"


def every_event() -> list[Event]:
    return [Event(kind, zone, LOCATION) for zone, kind in enumerate(EventKind, start=1)]


def key_text(size: int) -> str:
    return secrets.token_hex(size)[:size].upper()


def assert_decoded(ev: SIAEvent, sent: Event, fmt: MessageFormat) -> None:
    """What pysiaalarm decoded is what we meant: code, zone, account, timestamp, location."""
    code = MAPPING[sent.kind]
    assert ev.account == ACCOUNT
    assert ev.valid_message and ev.sia_code is not None
    if fmt is MessageFormat.SIA_DCS:
        assert ev.code == code.sia
        assert ev.message == f"{sent.zone:03d}"  # the zone after the code
        assert ev.ri == "1"  # SIA DC-03 "ri": the area
    else:
        assert ev.event_qualifier == str(code.qualifier)
        assert ev.event_type == f"{code.cid:03d}"
        assert ev.partition == "01"
        assert ev.ri == f"{sent.zone:03d}"  # Contact ID zone (pysiaalarm calls it ri)
    stamp = ev.timestamp
    assert isinstance(stamp, datetime) and stamp.tzinfo is not None
    assert abs(stamp.timestamp() - time.time()) < 5
    xdata = {x.identifier: x.value for x in ev.extended_data or []}
    assert xdata == {"L": location_text(LOCATION)}


@pytest.mark.parametrize("transport", list(Transport))
@pytest.mark.parametrize("fmt", list(MessageFormat))
@pytest.mark.parametrize("key_size", [None, 16, 24, 32])
def test_every_event_is_decoded(
    receivers: Callable[..., SiaReceiver],
    harness: Harness,
    transport: Transport,
    fmt: MessageFormat,
    key_size: int | None,
) -> None:
    key = key_text(key_size) if key_size else None
    rx = receivers(transport, key=key)
    harness.start(settings(rx.receiver(key=key.encode() if key else None), fmt=fmt))
    events = every_event()
    harness.put(*events)
    decoded = rx.wait(len(events))
    assert len(decoded) == len(events)
    for got, sent in zip(decoded, events, strict=True):
        assert_decoded(got, sent, fmt)
        assert got.encrypted is bool(key)
    harness.wait(lambda: harness.queue.depth() == 0, what="every event acknowledged")
    assert harness.queue.done == events  # acknowledged in order, each once
    assert rx.counts.error_crc == rx.counts.error_format == 0


@pytest.mark.parametrize("key_size", [None, 16])
def test_nak_resynchronises_the_clock_from_the_receivers_timestamp(
    receivers: Callable[..., SiaReceiver], harness: Harness, key_size: int | None
) -> None:
    """Our clock 10 minutes fast: pysiaalarm NAKs (timestamp out of its -40/+20 s band) with
    its own time; we take the offset from it and resend, and the alarm goes in."""
    key = key_text(key_size) if key_size else None
    rx = receivers(Transport.TCP, key=key)
    tx = harness.start(
        settings(rx.receiver(key=key.encode() if key else None)), wall=lambda: time.time() + 600
    )
    sent = Event(EventKind.PANIC, 3, LOCATION)
    harness.put(sent)
    [got] = rx.wait(1)
    assert_decoded(got, sent, MessageFormat.SIA_DCS)  # its timestamp is now the receiver's time
    assert rx.counts.error_timestamp >= 1  # the first attempt was refused for its time
    state = tx.status().receivers[0]
    assert -602 < state.clock_offset_s < -598
    assert state.total_failures >= 1 and "NAK" in state.last_error


def test_wrong_key_gets_nak_and_the_backup_takes_the_alarm(
    receivers: Callable[..., SiaReceiver], harness: Harness
) -> None:
    """pysiaalarm cannot parse what our (different) key encrypted and NAKs: the alarm is not
    taken for delivered, goes to the backup, and the primary decoded nothing."""
    good = key_text(16)
    primary = receivers(Transport.TCP, key=key_text(16))
    backup = receivers(Transport.UDP, key=good)
    tx = harness.start(
        settings(primary.receiver(key=good.encode()), backup.receiver(key=good.encode()))
    )
    harness.put(Event(EventKind.PANIC, 1, "Office"))
    [got] = backup.wait(1)
    assert got.code == "PA" and got.encrypted
    assert primary.alarms() == [] and primary.counts.error_format >= 1
    status = tx.status()
    # The alarm's NAK, or a later reply of the primary encrypted with its own key (seen once on
    # a loaded machine, after the transmitter polled it again): both name the key mismatch.
    last_error = status.receivers[0].last_error
    assert "NAK" in last_error or "does not decrypt with our key" in last_error, last_error
    assert status.active == backup.receiver().name


def test_wrong_account_is_not_taken_for_delivered(
    receivers: Callable[..., SiaReceiver], harness: Harness
) -> None:
    """For an account it does not know, pysiaalarm answers a bare ``"NAK"`` (no frame, no
    CRC, no CR). Not valid DC-09, so not trusted: the attempt failed, the backup takes it."""
    primary = receivers(Transport.TCP, account="5678")
    backup = receivers(Transport.TCP)
    tx = harness.start(settings(primary.receiver(), backup.receiver()))
    harness.put(Event(EventKind.HOLDUP, 4, "Office"))
    [got] = backup.wait(1)
    assert got.code == "HA"
    assert primary.alarms() == [] and primary.counts.error_account >= 1
    assert '"NAK"' in tx.status().receivers[0].last_error


@pytest.mark.parametrize("transport", list(Transport))
def test_receiver_stopped_and_restarted_loses_nothing(
    receivers: Callable[..., SiaReceiver], harness: Harness, transport: Transport
) -> None:
    rx = receivers(transport)
    tx = harness.start(settings(rx.receiver()))
    first = [Event(EventKind.PANIC, z, "") for z in range(1, 4)]
    harness.put(*first)
    rx.wait(3)
    rx.stop()
    during = [Event(EventKind.PANIC, z, "") for z in range(4, 10)]
    harness.put(*during)
    harness.wait(lambda: tx.status().path_ok is False, what="the path reported down")
    assert harness.queue.depth() == len(during)
    back = receivers(transport, port=rx.port)
    decoded = back.wait(len(during))
    assert [int(e.message) for e in decoded] == [e.zone for e in during]  # all, in order
    harness.wait(lambda: tx.status().path_ok is True, what="the path reported up")
    assert [ok for ok, _ in harness.paths] == [True, False, True]


@pytest.mark.parametrize("transport", list(Transport))
def test_primary_down_falls_back_to_the_backup_and_returns(
    receivers: Callable[..., SiaReceiver], harness: Harness, transport: Transport
) -> None:
    port = free_port(transport)
    backup = receivers(transport)
    shift = [0.0]
    primary_rx = SiaReceiver(transport, [], port).receiver()  # nothing listens there yet
    tx = harness.start(
        settings(primary_rx, backup.receiver()), clock=lambda: time.monotonic() + shift[0]
    )
    harness.put(Event(EventKind.PANIC, 1, ""))
    backup.wait(1)
    assert tx.status().active == backup.receiver().name
    harness.put(Event(EventKind.PANIC, 2, ""))  # stays on the backup: the primary just failed
    assert [int(e.message) for e in backup.wait(2)] == [1, 2]
    primary = receivers(transport, port=port)
    shift[0] += 31  # supervision_s later: the primary is tried first again
    harness.put(Event(EventKind.PANIC, 3, ""))
    [got] = primary.wait(1)
    assert int(got.message) == 3
    harness.wait(lambda: tx.status().active == primary_rx.name, what="back on the primary")


def test_supervision_polls_and_detects_path_failure(
    receivers: Callable[..., SiaReceiver], harness: Harness
) -> None:
    """With nothing to send, a NULL message every supervision_s; a failed poll reports the path
    down (on_path), the next good one up. pysiaalarm shows a NULL poll as code RP."""
    rx = receivers(Transport.TCP)
    shift = [0.0]
    tx = harness.start(settings(rx.receiver()), clock=lambda: time.monotonic() + shift[0])
    [poll] = rx.wait(1, polls=True)  # at start: the path is proven at once
    assert poll.message_type.value == "NULL" and poll.account == ACCOUNT
    harness.wait(lambda: harness.paths == [(True, rx.receiver().name)], what="path up")
    rx.stop()
    shift[0] += 31
    # The status changes first, then on_path is called: wait for both, not one then the other.
    harness.wait(
        lambda: tx.status().path_ok is False and harness.paths[-1][0] is False,
        what="the failed poll noticed and reported",
    )
    back = receivers(Transport.TCP, port=rx.port)
    back.wait(1, polls=True)
    harness.wait(lambda: tx.status().path_ok is True, what="the path back up")


def test_periodic_test_report(receivers: Callable[..., SiaReceiver], harness: Harness) -> None:
    rx = receivers(Transport.UDP)
    shift = [0.0]
    harness.start(
        settings(rx.receiver(), fmt=MessageFormat.ADM_CID, test_report_s=3600),
        clock=lambda: time.monotonic() + shift[0],
    )
    rx.wait(1, polls=True)
    shift[0] += 3601
    [report] = rx.wait(1)
    assert (report.event_qualifier, report.event_type, report.ri) == ("1", "602", "000")
    assert report.code == "RP"


def free_port(transport: Transport) -> int:
    kind = socket.SOCK_STREAM if transport is Transport.TCP else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_decoded_time_is_utc(receivers: Callable[..., SiaReceiver], harness: Harness) -> None:
    """The frame's timestamp is UTC whatever the box's time zone: pysiaalarm reads it as UTC."""
    rx = receivers(Transport.TCP)
    harness.start(settings(rx.receiver()))
    harness.put(Event(EventKind.PANIC, 1, ""))
    [got] = rx.wait(1)
    assert abs((got.timestamp - datetime.now(UTC)).total_seconds()) < 5


def test_a_kept_connection_the_receiver_closed_costs_no_attempt(
    receivers: Callable[..., SiaReceiver], harness: Harness
) -> None:
    """TCP stays connected between messages; after a receiver restart the first message must
    not be spent on the dead connection (with one attempt, that would be a lost round)."""
    rx = receivers(Transport.TCP)
    tx = harness.start(settings(rx.receiver(), attempts=1))
    harness.put(Event(EventKind.PANIC, 1, ""))
    rx.wait(1)
    rx.stop()
    back = receivers(Transport.TCP, port=rx.port)
    time.sleep(0.2)  # the old connection's FIN has arrived
    harness.put(Event(EventKind.PANIC, 2, ""))
    [got] = back.wait(1)
    assert int(got.message) == 2
    assert tx.status().receivers[0].total_failures == 0
