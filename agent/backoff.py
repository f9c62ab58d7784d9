"""The one reconnect backoff: exponential, with equal jitter, built on tenacity's waits.

A whole region's boxes lose the broker together (a police network's outage); jitter keeps them
from coming back as one wave. Equal jitter, half fixed and half random, keeps both: a box never
retries hot, and two boxes' retries spread over half the ceiling. While an alarm waits the wait
is capped (1 s by default): an alarm is worth a reconnect storm. The camera supervisor uses the
same tenacity policy for its own retry loop (agent/video/camera.py).
"""

from __future__ import annotations

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base


def equal_jitter(base_s: float, cap_s: float) -> wait_base:
    """tenacity's wait for attempt n: half of min(cap, base * 2**(n-1)), plus up to as much."""
    return wait_exponential(multiplier=base_s / 2, max=cap_s / 2) + wait_random_exponential(
        multiplier=base_s / 2, max=cap_s / 2
    )


class Backoff:
    """Delays between attempts of a loop that is not tenacity's own (it also waits on a pipe,
    so that an alarm can cut the wait short)."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0, alarm_cap_s: float = 1.0) -> None:
        self.base_s, self.cap_s, self.alarm_cap_s = base_s, cap_s, alarm_cap_s
        self._wait = equal_jitter(base_s, cap_s)
        self._attempt = RetryCallState(Retrying(), None, (), {})  # the wait reads its number
        self.failures = 0

    def next_delay(self, alarm_waiting: bool = False) -> float:
        self.failures += 1
        self._attempt.attempt_number = self.failures
        delay = float(self._wait(self._attempt))
        return min(delay, self.alarm_cap_s) if alarm_waiting else delay

    def reset(self) -> None:
        self.failures = 0
