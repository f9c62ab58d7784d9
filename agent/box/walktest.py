"""The walk test: alarms carry ``test: true`` so the centre does not dispatch; it ends by itself.

It ends on the monotonic clock, never on the wall clock. NTP is unauthenticated on most school
networks and a Pi has no RTC: a step back of the wall clock would otherwise keep test mode on,
and every real alarm would go out marked as a test. The deadline survives a restart of the
agent, since CLOCK_MONOTONIC runs on across processes and the kernel's boot id says whether it
is still the same clock; a reboot ends the test, erring towards a real alarm.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

MAX_MINUTES = 240  # the one limit: the control socket, the centre's command and the CLI use it
FILE = "test-mode.json"

Clock = Callable[[], float]


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""  # not Linux: a restart of the agent then ends the test


class WalkTest:
    """Test mode of one box, saved in its storage dir. Touches the disk only in load/start/stop."""

    def __init__(
        self,
        storage: Path,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        boot: Callable[[], str] = boot_id,
    ) -> None:
        self._path = storage / FILE
        self._clock = clock
        self._wall = wall
        self._boot = boot
        self._until: float | None = None  # monotonic

    def load(self) -> None:
        """Resume a walk test after a restart of the agent, if it is still the same boot."""
        try:
            saved = json.loads(self._path.read_text())
            until, boot = float(saved["until_monotonic"]), str(saved["boot_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        now = self._clock()
        if boot and boot == self._boot() and now < until <= now + MAX_MINUTES * 60:
            self._until = until

    def start(self, minutes: int) -> None:
        if not 1 <= minutes <= MAX_MINUTES:
            raise ValueError(f"test mode lasts 1 to {MAX_MINUTES} minutes")
        self._until = self._clock() + minutes * 60
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "until_monotonic": self._until,
                    "boot_id": self._boot(),
                    "until_wall": self.until_wall(),
                }
            )
        )
        tmp.rename(self._path)

    def stop(self) -> None:
        self._until = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)

    def active(self) -> bool:
        return self._until is not None and self._clock() < self._until

    def expired(self) -> bool:
        """On, but past its end: the supervisor then switches it off (and says so)."""
        return self._until is not None and self._clock() >= self._until

    def until_wall(self) -> float | None:
        """When it ends, on the wall clock as it reads now: for people and the centre only."""
        if self._until is None:
            return None
        return self._wall() + (self._until - self._clock())
