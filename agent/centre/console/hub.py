"""Fan-out of events to every open console (Server-Sent Events), without polling in the browser.

Any thread calls :meth:`Hub.publish`; each open event stream has its own bounded queue, read by
its HTTP thread. A console that falls behind (a stalled tab, a dead network) is not waited for:
its queue overflows, it is told to reconnect, and on reconnecting it gets a full snapshot, so
nothing it missed is lost and no other console slows down.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

QUEUE_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # alarm, site, clip, command, resync
    data: dict[str, Any]


class Subscription:
    def __init__(self) -> None:
        self.queue: queue.Queue[Event] = queue.Queue(QUEUE_EVENTS)
        self.overflowed = False

    def get(self, timeout: float) -> Event | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _subs; never held while a queue blocks
        self._subs: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription()
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def listeners(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(kind, data)
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            try:
                sub.queue.put_nowait(event)
            except queue.Full:
                sub.overflowed = True
