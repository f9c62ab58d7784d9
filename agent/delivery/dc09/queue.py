"""The transmitter's view of durable storage: a small protocol, and an in-memory queue for tests.

The transmitter never owns its events: the agent commits each alarm once, and each path (MQTT,
DC-09) drains its own copy, so one path failing never holds the other back. What the DC-09
path needs from storage is four calls; phase 2 implements them on the agent's outbox, with a
``path`` column so the MQTT row and the DC-09 row of one alarm are acknowledged independently,
committed in the same transaction as the alarm (kill -9 between the two must not leave one).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from agent.delivery.dc09.events import Event


@dataclass(frozen=True, slots=True)
class Queued:
    id: int
    event: Event


class EventQueue(Protocol):
    """Called from the transmitter's thread, except :meth:`depth` (status asks from its own);
    implementations lock where others write. None of them may raise for one bad row: a row
    that cannot be made into an :class:`Event` is the adapter's to set aside, or the thread
    would crash on it at every restart."""

    def next_event(self) -> Queued | None:
        """The oldest event not yet acknowledged or refused (the same one until it is)."""

    def acked(self, event_id: int) -> None:
        """A receiver acknowledged it: it is done on this path."""

    def refused(self, event_id: int, reason: str) -> None:
        """A receiver answered DUH (it does not handle this message): do not resend it, keep
        it visible (status) so a technician can act; the MQTT path still carries the alarm."""

    def depth(self) -> int:
        """Events waiting, for status and health."""


class MemoryQueue:
    """An :class:`EventQueue` in memory, for tests and the bench: what a durable one does,
    minus the disk. ``done`` and ``refusals`` keep what happened, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # put() comes from the test's thread
        self._pending: dict[int, Event] = {}
        self._next_id = 1
        self.done: list[Event] = []
        self.refusals: list[tuple[Event, str]] = []

    def put(self, event: Event) -> int:
        with self._lock:
            event_id, self._next_id = self._next_id, self._next_id + 1
            self._pending[event_id] = event
            return event_id

    def next_event(self) -> Queued | None:
        with self._lock:
            for event_id, event in self._pending.items():
                return Queued(event_id, event)
            return None

    def acked(self, event_id: int) -> None:
        with self._lock:
            self.done.append(self._pending.pop(event_id))

    def refused(self, event_id: int, reason: str) -> None:
        with self._lock:
            self.refusals.append((self._pending.pop(event_id), reason))

    def depth(self) -> int:
        with self._lock:
            return len(self._pending)
