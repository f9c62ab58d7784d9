"""pysiaalarm, a DC-09 receiver we did not write, on free loopback ports, and the simulated
school with its buttons numbered as DC-09 zones: for the tests (tests/dc09/) and bench/dc09.py.
Imported only by those, which skip (with the reason) where pysiaalarm, a test dependency, is
missing."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pysiaalarm.account import SIAAccount
from pysiaalarm.event import SIAEvent
from pysiaalarm.sync.client import SIAClient
from pysiaalarm.utils.enums import CommunicationsProtocol

from agent.delivery.dc09.settings import Receiver, Transport
from agent.testing.school import school_config

ACCOUNT = "1234"


def zoned_school(
    path: Path,
    *,
    port: int,
    storage: Path,
    buttons: Mapping[str, Mapping[str, Any]] | None = None,
    **sections: Any,
) -> Path:
    """The simulated school (:func:`~agent.testing.school.school_config`, without cameras,
    ``sections`` passed on) with each button numbered, as a ``dc09`` section requires: its
    zone is its place in the school's list (entrance 1, gym 2, ...). ``buttons`` is merged into
    the button of that id (``{"office": {"holdup": True}}``). The ``dc09`` section is one of
    ``sections``; without it, the same school as a box without DC-09.

    The buttons are read back from what ``school_config`` wrote, so they stay the school's
    (its cameras already taken out) and a new key reaches them through that one function."""
    school_config(path, port=port, storage=storage, **sections)
    extra = buttons or {}
    zoned = [
        {**b, "number": zone, **extra.get(b["id"], {})}
        for zone, b in enumerate(yaml.safe_load(path.read_text())["buttons"], start=1)
    ]
    return school_config(path, port=port, storage=storage, **{**sections, "buttons": zoned})


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
        proto = (
            CommunicationsProtocol.TCP
            if self.transport is Transport.TCP
            else CommunicationsProtocol.UDP
        )
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
            seen: dict[tuple[Any, ...], SIAEvent] = {}
            for e in self.events:
                if polls or str(getattr(e.message_type, "value", e.message_type)) != "NULL":
                    seen.setdefault((e.sequence, e.receiver, e.message_type), e)
            return sorted(seen.values(), key=lambda e: int(e.sequence or 0))

    def alarms(self) -> list[SIAEvent]:
        return self.messages()

    def wait(self, n: int, timeout: float = 10.0, *, polls: bool = False) -> list[SIAEvent]:
        def got() -> list[SIAEvent]:
            return self.messages(polls=polls)

        with self._cond:
            if not self._cond.wait_for(lambda: len(got()) >= n, timeout):
                raise AssertionError(
                    f"pysiaalarm decoded {len(got())} messages in {timeout} s, "
                    f"expected {n}: {[str(e) for e in got()]}"
                )
            return got()
