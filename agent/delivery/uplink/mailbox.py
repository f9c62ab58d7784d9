"""What other threads post for the uplink to publish, beside the outbox: state and live video.

None of it is stored. State topics (status, health, the box's key) keep only their newest value,
published retained; a value lost with its connection before the broker's PUBACK is posted
again (the key is posted once per start: losing it would fail every clip's verification).
Answers to unauthenticated input are sent once if online. Live video degrades rather than
queues: a newer segment replaces the chunks of one still waiting.

Threads: ``post_*`` from any thread; everything else from the uplink thread only. ``_lock``
guards the posted values, held only to copy or assign.
"""

from __future__ import annotations

import threading
from collections import deque

from agent.delivery.outbox import Message
from agent.delivery.protocol import Priority

LIVE_ROW = 0  # the row id of live messages, which have no outbox row (ids start at 1)


class Mailbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, bytes] = {}
        self._transient: deque[tuple[str, bytes]] = deque(maxlen=32)
        self._live: dict[str, deque[Message]] = {}  # live topic -> the newest segment's chunks
        self.live_dropped = 0  # live segments skipped because the link was behind
        self._latest_sent: dict[int, tuple[str, bytes]] = {}  # paho mid -> awaiting PUBACK

    # any thread

    def post_latest(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._latest[topic] = payload

    def post_transient(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._transient.append((topic, payload))

    def post_live(self, topic: str, payloads: list[bytes]) -> None:
        msgs = [Message(LIVE_ROW, Priority.LIVE, topic, "", 1, False, p) for p in payloads]
        with self._lock:
            if self._live.get(topic):
                self.live_dropped += 1
            self._live[topic] = deque(msgs)

    # the uplink thread

    def take(self) -> tuple[dict[str, bytes], list[tuple[str, bytes]]]:
        """The state values and transient answers to publish now."""
        with self._lock:
            latest, self._latest = self._latest, {}
            transient = list(self._transient)
            self._transient.clear()
        return latest, transient

    def latest_sent(self, mid: int, topic: str, payload: bytes) -> None:
        self._latest_sent[mid] = (topic, payload)

    def acked(self, mid: int) -> None:
        self._latest_sent.pop(mid, None)

    def connection_ended(self) -> None:
        """State values the broker never acknowledged go again, unless a newer one waits."""
        with self._lock:
            for topic, payload in self._latest_sent.values():
                self._latest.setdefault(topic, payload)
        self._latest_sent.clear()

    def next_live(self) -> Message | None:
        """The oldest waiting live chunk of any camera (peeked; ``taken`` once published)."""
        with self._lock:
            for waiting in self._live.values():
                if waiting:
                    return waiting[0]
        return None

    def taken(self, msg: Message) -> None:
        with self._lock:
            waiting = self._live.get(msg.topic)
            if waiting and waiting[0] is msg:  # not replaced by a newer segment since
                waiting.popleft()
