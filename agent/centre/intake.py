"""What the centre's receiver takes in from boxes, bounded per site: limits, a fair queue and
the operator's reports. Shared by the alarm desk (agent/centre/receiver.py) and the video assembler
(agent/centre/assembler.py).

One box may be hostile (docs/security.md). Everything a box can make the centre hold is
therefore capped per site, so one box exhausts only its own share, and served round-robin, so
one site's burst waits behind itself and not in front of another school's alarm.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from agent.centre.ledgerstore import LedgerStore

log = logging.getLogger("agent.centre")

T = TypeVar("T")
MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound of the receiver; docs/security.md says why each default is what it is."""

    alarm_bytes_per_day: int = 64 * MiB  # new alarms stored per site, after a burst of
    alarm_burst_bytes: int = 16 * MiB  # (some 30,000 alarms: a box back from an outage)
    alarm_queue_site: int = 1000  # alarms and statuses waiting to be stored, per site
    alarm_queue_total: int = 20_000
    video_queue_site_bytes: int = 16 * MiB  # chunks waiting for the video thread
    video_queue_bytes: int = 192 * MiB
    assembly_site_bytes: int = 64 * MiB  # chunks of segments not yet complete, in memory
    assembly_bytes: int = 576 * MiB
    open_clips_site: int = 32
    live_sessions_site: int = 4
    live_idle_s: float = 60.0
    site_quota_bytes: int = 100 * GiB  # a site's clips, live files and partial segments on disk
    min_free_bytes: int = 10 * GiB  # video stops here; alarms keep the rest of the disk
    partial_ttl_s: float = 7 * 24 * 3600.0  # a clip that never completes is removed after
    report_every_s: float = 10.0  # at most one report per (site, kind) in this time

    @classmethod
    def for_memory(cls, memory_mb: int, **others: float) -> Limits:
        """Video buffering in ``memory_mb`` in all: 3/4 for assembly, 1/4 for the queue, a
        quarter of each (at most 64 and 16 MiB) for one site."""
        total = memory_mb * MiB
        assembly, queue = total * 3 // 4, total // 4
        return cls(
            assembly_bytes=assembly,
            assembly_site_bytes=min(64 * MiB, assembly // 4),
            video_queue_bytes=queue,
            video_queue_site_bytes=min(16 * MiB, queue // 4),
            **others,  # type: ignore[arg-type]
        )


class FairQueue(Generic[T]):
    """Per-site FIFO queues served round-robin, capped per site and in total.

    ``put`` refuses (False) what would exceed a cap, so a flood costs its sender only. ``get``
    takes the next site in turn, so a site with one alarm waits for at most one item of each
    other busy site, however many the others have queued. Any thread may put; one thread gets.
    """

    def __init__(
        self, site_items: int, site_bytes: int, total_items: int, total_bytes: int
    ) -> None:
        self._caps = (site_items, site_bytes, total_items, total_bytes)
        self._cond = threading.Condition()  # guards everything below
        self._queues: dict[str, deque[tuple[T, int]]] = {}
        self._turns: deque[str] = deque()  # sites with something queued, in serving order
        self._site_bytes: dict[str, int] = {}
        self._items = 0
        self._bytes = 0

    def put(self, site: str, item: T, size: int = 0) -> bool:
        site_items, site_bytes, total_items, total_bytes = self._caps
        with self._cond:
            queue = self._queues.get(site)
            held = self._site_bytes.get(site, 0)
            if (
                (queue is not None and len(queue) >= site_items)
                or held + size > site_bytes
                or self._items >= total_items
                or self._bytes + size > total_bytes
            ):
                return False
            if queue is None:
                queue = self._queues[site] = deque()
                self._turns.append(site)
            queue.append((item, size))
            self._site_bytes[site] = held + size
            self._items += 1
            self._bytes += size
            self._cond.notify()
            return True

    def get(self, timeout: float) -> tuple[str, T] | None:
        with self._cond:
            if not self._turns and not self._cond.wait(timeout):
                return None
            if not self._turns:
                return None
            site = self._turns.popleft()
            queue = self._queues[site]
            item, size = queue.popleft()
            if queue:
                self._turns.append(site)  # its next item after every other site's
                self._site_bytes[site] -= size
            else:
                del self._queues[site], self._site_bytes[site]
            self._items -= 1
            self._bytes -= size
            return site, item

    def __len__(self) -> int:
        with self._cond:
            return self._items

    def wake(self) -> None:
        """Let a waiting ``get`` return None now (to stop its thread)."""
        with self._cond:
            self._cond.notify_all()


def end_worker(
    thread: threading.Thread | None, stopping: threading.Event, queue: FairQueue[T], timeout: float
) -> bool:
    """Tell a queue's worker to stop, wake it, and wait up to ``timeout`` for it to finish
    what it is doing; False if it is still busy then."""
    stopping.set()
    queue.wake()
    if thread is not None:
        thread.join(timeout)
    return thread is None or not thread.is_alive()


class Budget:
    """A token bucket per site: ``take(site, n)`` is False once the site is over its rate."""

    def __init__(self, per_s: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self._per_s, self._burst, self._clock = per_s, float(burst), clock
        self._lock = threading.Lock()  # guards _state
        self._state: dict[str, tuple[float, float]] = {}  # site -> (tokens, at)

    def take(self, site: str, n: float = 1.0) -> bool:
        now = self._clock()
        with self._lock:
            tokens, at = self._state.get(site, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._per_s)
            ok = tokens >= n
            self._state[site] = (tokens - n if ok else tokens, now)
            return ok


class Reporter:
    """What the operator must see about a site: one log line and one ledger row (shown by
    ``edge-agent central status``) per (site, kind) per ``every_s``, with a count of what was
    held back. A box repeating a refused message ten thousand times a second makes one line per
    interval, not a flood that journald's rate limit would cut together with honest alarms."""

    def __init__(
        self, ledger: LedgerStore, every_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ledger, self._every_s, self._clock = ledger, every_s, clock
        self._lock = threading.Lock()  # guards _last; the ledger has its own
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (when, held back since)

    def report(self, site: str, what: str, detail: str, level: int = logging.WARNING) -> None:
        now = self._clock()
        with self._lock:
            when, held = self._last.get((site, what), (-self._every_s, 0))
            if now - when < self._every_s:
                self._last[site, what] = (when, held + 1)
                return
            self._last[site, what] = (now, 0)
        if held:
            detail += f" ({held} more like it in the last {now - when:.0f} s)"
        log.log(level, "site %s: %s: %s", site, what, detail)
        try:
            self._ledger.report(site, what, detail)
        except Exception:  # the ledger failing must not silence the log line, nor raise
            log.exception("cannot record a report for site %s", site)
