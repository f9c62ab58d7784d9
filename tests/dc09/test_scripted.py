"""The answers pysiaalarm never gives, from a scripted receiver: DUH, a late ACK for an earlier
message, a corrupt ACK, an ACK for another account, silence. Each test checks what a centre
would have seen (the frames that arrived) and what the box concluded (its queue, its status)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from agent.delivery.dc09.events import Event, EventKind
from agent.delivery.dc09.frame import crc16
from agent.delivery.dc09.settings import Receiver, Transport
from tests.dc09.conftest import Harness, settings


def frame_of(body: str) -> bytes:
    raw = body.encode("ascii")
    return b"\n%04X0%03X%s\r" % (crc16(raw), len(raw), raw)


class Scripted:
    """A TCP receiver that answers the n-th frame with ``script[n]`` (then ACKs)."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.frames: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def receiver(self) -> Receiver:
        return Receiver("127.0.0.1", self.port, Transport.TCP, "1234", "1", "2")

    def seqs(self) -> list[str]:
        found = (re.search(rb'"(?:SIA-DCS|NULL)"(\d{4})', f) for f in self.frames)
        return [m[1].decode() for m in found if m is not None]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.2)
                buf = b""
                while not self._stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    buf += data
                    while b"\r" in buf:
                        frame, buf = buf.split(b"\r", 1)
                        self._answer(conn, frame + b"\r")

    def _answer(self, conn: socket.socket, frame: bytes) -> None:
        self.frames.append(frame)
        m = re.search(rb'"(?:SIA-DCS|NULL)"(\d{4})', frame)
        assert m is not None
        seq = int(m[1])
        n = len(self.frames) - 1
        action = self.script[n] if n < len(self.script) else "ack"
        ack = frame_of(f'"ACK"{seq:04d}R1L2#1234[]')
        replies = {
            "ack": ack,
            "duh": frame_of(f'"DUH"{seq:04d}R1L2#1234[]'),
            "late": frame_of(f'"ACK"{seq - 1:04d}R1L2#1234[]') + ack,
            "bad_crc": b"\n0000" + ack[5:],
            "other_account": frame_of(f'"ACK"{seq:04d}R1L2#9999[]'),
            "silence": b"",
        }
        with contextlib.suppress(OSError):
            conn.sendall(replies[action])


@pytest.fixture
def scripted() -> Iterator[list[Scripted]]:
    made: list[Scripted] = []
    yield made
    for s in made:
        s.close()


def start(harness: Harness, scripted: list[Scripted], *script: str) -> Scripted:
    rx = Scripted(list(script))
    scripted.append(rx)
    harness.start(settings(rx.receiver(), attempts=3), first_seq=10)
    return rx


def test_duh_refuses_the_event_and_the_queue_moves_on(
    harness: Harness, scripted: list[Scripted]
) -> None:
    rx = start(harness, scripted, "ack", "duh")  # the first frame is the start-up NULL poll
    harness.put(Event(EventKind.PANIC, 1), Event(EventKind.PANIC, 2))
    harness.wait(lambda: len(harness.queue.done) == 1, what="the second event acknowledged")
    [(refused, reason)] = harness.queue.refusals
    assert refused.zone == 1 and "DUH" in reason and "docs/dc09.md" in reason
    assert rx.seqs() == ["0010", "0011", "0012"]  # the refused one was not resent
    assert harness.tx is not None and harness.tx.status().refused == 1


def test_a_late_ack_for_an_earlier_message_is_skipped(
    harness: Harness, scripted: list[Scripted]
) -> None:
    rx = start(harness, scripted, "ack", "late")
    harness.put(Event(EventKind.PANIC, 1))
    harness.wait(lambda: harness.queue.done, what="acknowledged")
    assert rx.seqs() == ["0010", "0011"]  # taken on the right ACK, no resend


@pytest.mark.parametrize("answer", ["bad_crc", "other_account", "silence"])
def test_an_answer_that_is_not_an_ack_of_ours_means_resend_the_same_message(
    harness: Harness, scripted: list[Scripted], answer: str
) -> None:
    rx = start(harness, scripted, "ack", answer)
    harness.put(Event(EventKind.PANIC, 1))
    harness.wait(lambda: harness.queue.done, what="acknowledged after the resend")
    assert rx.seqs() == ["0010", "0011", "0011"]  # a retry repeats the number
    assert harness.tx is not None
    assert harness.tx.status().receivers[0].total_failures == 1


def test_an_event_waits_while_no_receiver_answers(
    harness: Harness, scripted: list[Scripted]
) -> None:
    rx = start(harness, scripted, "ack", *["silence"] * 6)
    harness.put(Event(EventKind.PANIC, 1))
    assert harness.tx is not None
    harness.wait(
        lambda: harness.tx is not None and harness.tx.status().path_ok is False,
        what="the path down after 3 silent attempts",
    )
    assert harness.queue.depth() == 1 and not harness.queue.done
    harness.wait(lambda: harness.queue.done, timeout=15, what="sent once it answers")
    assert rx.seqs()[:4] == ["0010", "0011", "0011", "0011"]


def test_a_receiver_that_is_down_is_not_hammered(harness: Harness) -> None:
    """Polls and test reports to a dead receiver back off like events do: a few attempts a
    second at most, not a busy loop (connection refused returns at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    dead = Receiver("127.0.0.1", port, Transport.TCP, "1234")
    shift = [0.0]
    tx = harness.start(
        settings(dead, test_report_s=30, retry_max_s=0.5), clock=lambda: time.monotonic() + shift[0]
    )
    harness.wait(lambda: tx.status().path_ok is False, what="the start-up poll failing")
    shift[0] += 31  # the periodic test report is due too
    before = tx.status().receivers[0].total_failures
    time.sleep(1.5)
    assert tx.status().receivers[0].total_failures - before <= 8  # about 5; 14 without the pause
    assert "cannot connect" in tx.status().receivers[0].last_error
