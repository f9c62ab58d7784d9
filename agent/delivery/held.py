"""Alarms the disk refused, held in memory by the outbox (agent/delivery/outbox.py).

When the disk refuses a write (full, read-only, a failing card), an alarm is kept in memory
and still sent: a broken disk must never silence a button. A held alarm goes through the same
states as a row (READY, then DELIVERED once the broker has it) and is forgotten on the
centre's receipt; a restart loses it, which is why it is said loudly. Its id is negative, so
it can never be taken for a row's, and its seq continues from the last one the disk knows.

Not thread-safe: the outbox calls it under its own lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass

from agent.delivery.protocol import Priority
from agent.delivery.rows import Message, RowState


@dataclass
class _Held:
    msg: Message
    state: RowState = RowState.READY


class MemoryHold:
    def __init__(self) -> None:
        self._held: list[_Held] = []  # in seq order
        self._ids = itertools.count(-1, -1)

    def add(self, topic: str, key: str, payload: bytes, seq: int) -> None:
        msg = Message(next(self._ids), Priority.ALARM, topic, key, 1, False, payload, seq)
        self._held.append(_Held(msg))

    def ready(self, exclude: Collection[int]) -> list[Message]:
        """The held alarms waiting to be sent, but those in ``exclude``."""
        return [h.msg for h in self._held if h.state is RowState.READY and h.msg.id not in exclude]

    def counts(self) -> tuple[int, int]:
        """(waiting to be sent, waiting for the centre's receipt)."""
        ready = sum(h.state is RowState.READY for h in self._held)
        return ready, len(self._held) - ready

    def get(self, message_id: int) -> Message | None:
        for held in self._held:
            if held.msg.id == message_id:
                return held.msg
        return None

    def mark_delivered(self, message_id: int) -> None:
        for held in self._held:
            if held.msg.id == message_id:
                held.state = RowState.DELIVERED

    def delivered(self) -> list[int]:
        return [h.msg.id for h in self._held if h.state is RowState.DELIVERED]

    def forget(self, message_id: int) -> None:
        self._held = [h for h in self._held if h.msg.id != message_id]

    def confirm(self, keys: list[str]) -> list[int]:
        """Forget the alarms with these keys (event ids); returns their ids."""
        gone = [h.msg.id for h in self._held if h.msg.key in keys]
        self._held = [h for h in self._held if h.msg.key not in keys]
        return gone
