"""Our transmitter under a real Supervisor, with fast loopback timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.delivery.dc09.events import MessageFormat
from agent.delivery.dc09.queue import MemoryQueue
from agent.delivery.dc09.settings import Receiver, Settings, Transport
from agent.delivery.dc09.transmitter import Transmitter
from agent.supervision import Supervisor


def settings(
    *receivers: Receiver, fmt: MessageFormat = MessageFormat.SIA_DCS, **kw: Any
) -> Settings:
    """Fast timings for loopback: a lost reply costs 0.5 s, not 5."""
    base: dict[str, Any] = {
        "ack_timeout_s": 0.5,
        "attempts": 2,
        "retry_max_s": 0.5,
        "supervision_s": 30.0,
        "test_report_s": None,
    }
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
        self.tx = Transmitter(
            s, self.queue, on_path=lambda ok, why: self.paths.append((ok, why)), **kw
        )
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
def receivers() -> Iterator[Callable[..., Any]]:
    """``receivers(transport, account=, key=, port=, timeband=)`` starts a pysiaalarm receiver
    (agent/testing/sia.py); each is stopped at the end of the test."""
    from pysiaalarm import SIAAccount

    from agent.testing.sia import ACCOUNT, SiaReceiver

    started: list[SiaReceiver] = []

    def make(
        transport: Transport = Transport.TCP,
        *,
        account: str = ACCOUNT,
        key: str | None = None,
        port: int = 0,
        timeband: tuple[int, int] = (40, 20),
    ) -> SiaReceiver:
        rx = SiaReceiver(transport, [SIAAccount(account, key, allowed_timeband=timeband)], port)
        started.append(rx)
        return rx.start()

    yield make
    for rx in started:
        rx.stop()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.stop()
