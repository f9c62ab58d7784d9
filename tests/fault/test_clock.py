"""The wall clock steps back an hour and forward a day between presses (a Pi without an RTC
meets NTP late, or a bad NTP server), with the broker down for part of it.

The system clock cannot be changed safely on a shared CI machine, so the agent process runs
under libfaketime (Debian package ``faketime``) with a file-controlled offset
(FAKETIME_TIMESTAMP_FILE, re-read on every call with FAKETIME_NO_CACHE=1). Only the wall
clock is faked: FAKETIME_DONT_FAKE_MONOTONIC=1 keeps CLOCK_MONOTONIC real, which is what an NTP
step does too (stepping monotonic as well would stall every timeout in the agent and in paho,
which is a broken kernel, not a clock step).

``seq`` must stay strictly increasing and the alarms must arrive in seq order (the outbox
orders by row id, never by time); ``pressed_at`` must follow the (fake) wall clock.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path

import pytest

from agent.testing.broker import Mosquitto
from tests.fault.conftest import fault_seed, fault_site

LIBFAKETIME = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/arm-linux-gnueabihf/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
]
HOUR, DAY = 3600, 86400
SLACK_S = 5.0  # pressed_at vs. the test's own view of real time + offset


def _libfaketime() -> str:
    for path in LIBFAKETIME:
        if Path(path).exists():
            return path
    pytest.skip("libfaketime is not installed (apt-get install faketime; install.sh --dev)")


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _clock_steps(
    tmp_path: Path, broker: Mosquitto, name: str, steps: list[tuple[int, int, bool]], label: str
) -> None:
    """Each step: (offset seconds, presses, broker up?)."""
    lib = _libfaketime()
    offset_file = tmp_path / "faketime.rc"
    offset_file.write_text("+0\n")
    env = {
        "LD_PRELOAD": lib,
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    expected: dict[str, float] = {}  # event_id -> the fake wall time at the press
    with fault_site(name, tmp_path, broker, env=env) as site:
        agent, centre, tally = site.agent, site.centre, site.tally
        broker_up = True
        for offset, presses, up in steps:
            if up and not broker_up:
                broker.start()
            elif broker_up and not up:
                # Let what was sent arrive first: an alarm the broker acked and then lost with
                # its process comes back through the receipt resend, after newer ones (that
                # order is test_broker_crash's business, not this test's).
                tally.wait_delivered(centre, 10)
                broker.kill()
            broker_up = up
            offset_file.write_text(f"{offset:+d}\n")
            for _ in range(presses):
                t = time.time() + offset
                for e in site.presser.press():
                    expected[e["event_id"]] = t
        if not broker_up:
            broker.start()
        tally.wait_delivered(centre, 30)
        stored = {a["event_id"]: a for a in centre.alarms()}
        skew = max(
            abs(_epoch(stored[eid]["pressed_at"]) - t)
            for eid, t in expected.items()
            if eid in stored
        )
        info = tally.report(centre, steps=label, pressed_at_max_skew_s=f"{skew:.2f}")
        tally.assert_ok(info)
        assert skew < SLACK_S, "pressed_at does not follow the agent's wall clock"
        assert agent.proc is not None and agent.proc.poll() is None


def test_wall_clock_steps_back_and_forward(tmp_path: Path, broker: Mosquitto) -> None:
    # NTP steps back an hour, then forward a day; then, with the broker down, alarms wait in
    # the outbox stamped with times out of order; then the broker returns.
    steps = [
        (0, 1, True),
        (-HOUR, 2, True),
        (DAY, 2, True),
        (-HOUR, 1, False),
        (DAY, 1, False),
        (-2 * HOUR, 1, False),
        (0, 1, True),
    ]
    _clock_steps(tmp_path, broker, "clock_steps", steps, "-1h,+1d,-1h,+1d,-2h,0")


@pytest.mark.slow
def test_soak_wall_clock_random_steps(tmp_path: Path, broker: Mosquitto, seed: int) -> None:
    name = "soak_clock_steps"
    rng = random.Random(fault_seed(name, seed))
    steps = [
        (rng.randint(-3 * DAY, 3 * DAY), rng.randint(1, 3), rng.random() > 0.3) for _ in range(60)
    ]
    _clock_steps(tmp_path, broker, name, steps, f"60-random(seed={seed})")
