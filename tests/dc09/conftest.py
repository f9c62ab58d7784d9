"""pysiaalarm, a DC-09 receiver we did not write, started by the tests on free loopback ports,
and our transmitter under a real Supervisor. The tests check what pysiaalarm decoded."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pysiaalarm = pytest.importorskip("pysiaalarm", reason="pip install pysiaalarm (the test extra)")

from pysiaalarm import SIAAccount, SIAEvent  # noqa: E402
from pysiaalarm.sync.client import SIAClient  # noqa: E402
from pysiaalarm.utils import CommunicationsProtocol  # noqa: E402

from agent.delivery.dc09.events import MessageFormat  # noqa: E402
from agent.delivery.dc09.queue import MemoryQueue  # noqa: E402
from agent.delivery.dc09.settings import Receiver, Settings, Transport  # noqa: E402
from agent.delivery.dc09.transmitter import Transmitter  # noqa: E402
from agent.supervision import Supervisor  # noqa: E402

ACCOUNT = "1234"


class SiaReceiver:
    """One pysiaalarm receiver (its threaded ``SIAClient``) on 127.0.0.1.

    ``stop()`` also closes the connections it accepted: pysiaalarm's ``stop`` closes only the
    listening socket, and a handler thread would go on answering on an open connection, which
    is not what a receiver that went away does."""

    def __init__(self, transport: Transport, accounts: list[SIAAccount], port: int = 0) -> None:
        self.transport = transport
        self.accounts = accounts
        self.port = port
        self.events: list[SIAEvent] = []
        self._cond = threading.Condition()
        self._conns: list[socket.socket] = []
        self._client: SIAClient | None = None

    def start(self) -> SiaReceiver:
        proto = (CommunicationsProtocol.TCP if self.transport is Transport.TCP
                 else CommunicationsProtocol.UDP)
        client = SIAClient("127.0.0.1", self.port, self.accounts, self._on_event, protocol=proto)
        server: Any = client.sia_server
        process = server.process_request

        def track(request: Any, address: Any) -> None:
            if isinstance(request, socket.socket):
                self._conns.append(request)
            process(request, address)

        server.process_request = track
        self.port = server.server_address[1]
        client.start()
        self._client = client
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.stop()
            self._client = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    @property
    def counts(self) -> Any:
        assert self._client is not None
        return self._client.counts

    def receiver(self, account: str = ACCOUNT, key: bytes | None = None) -> Receiver:
        return Receiver("127.0.0.1", self.port, self.transport, account, "1", "2", key)

    def _on_event(self, event: SIAEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def messages(self, *, polls: bool = False) -> list[SIAEvent]:
        """What it decoded, as a centre would file it: in sequence-number order, a resend of
        the same number once (pysiaalarm calls back from one thread per message, in no fixed
        order, and reports a resend again). Without the NULL polls unless ``polls``."""
        with self._cond:
            seen = {}
            for e in self.events:
                if polls or e.message_type.value != "NULL":
                    seen.setdefault((e.sequence, e.receiver, e.message_type), e)
            return sorted(seen.values(), key=lambda e: int(e.sequence))

    def alarms(self) -> list[SIAEvent]:
        return self.messages()

    def wait(self, n: int, timeout: float = 10.0, *, polls: bool = False) -> list[SIAEvent]:
        def got() -> list[SIAEvent]:
            return self.messages(polls=polls)

        with self._cond:
            if not self._cond.wait_for(lambda: len(got()) >= n, timeout):
                raise AssertionError(f"pysiaalarm decoded {len(got())} messages in {timeout} s, "
                                     f"expected {n}: {[str(e) for e in got()]}")
            return got()


@pytest.fixture
def receivers() -> Iterator[Callable[..., SiaReceiver]]:
    started: list[SiaReceiver] = []

    def make(transport: Transport = Transport.TCP, *, account: str = ACCOUNT,
             key: str | None = None, port: int = 0, timeband: tuple[int, int] = (40, 20)
             ) -> SiaReceiver:
        rx = SiaReceiver(transport, [SIAAccount(account, key, allowed_timeband=timeband)], port)
        started.append(rx)
        return rx.start()

    yield make
    for rx in started:
        rx.stop()


def settings(*receivers: Receiver, fmt: MessageFormat = MessageFormat.SIA_DCS,
             **kw: Any) -> Settings:
    """Fast timings for loopback: a lost reply costs 0.5 s, not 5."""
    base: dict[str, Any] = {"ack_timeout_s": 0.5, "attempts": 2, "retry_max_s": 0.5,
                            "supervision_s": 30.0, "test_report_s": None}
    base.update(kw)
    return Settings(tuple(receivers), fmt, **base)


class Harness:
    """A transmitter on its own Supervisor; a supervisor that gives up fails the test."""

    def __init__(self) -> None:
        self.gave_up: list[str] = []
        self.supervisor = Supervisor(give_up=self.gave_up.append)
        self.queue = MemoryQueue()
        self.paths: list[tuple[bool, str]] = []
        self.tx: Transmitter | None = None

    def start(self, s: Settings, **kw: Any) -> Transmitter:
        kw.setdefault("first_seq", 1)  # so that sequence order is sending order in a test
        self.tx = Transmitter(s, self.queue, on_path=lambda ok, why: self.paths.append((ok, why)),
                              **kw)
        self.tx.start(self.supervisor)
        return self.tx

    def put(self, *events: Any) -> None:
        assert self.tx is not None
        for e in events:
            self.queue.put(e)
        self.tx.wake()

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.01)
        raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")

    def stop(self) -> None:
        if self.tx is not None:
            self.tx.stop()
        assert not self.gave_up, self.gave_up
        for w in self.supervisor.workers():
            assert w.crashes == 0, f"thread {w.name} crashed"


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.stop()
