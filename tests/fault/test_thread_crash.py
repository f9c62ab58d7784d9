"""Crash-only threads, end to end: a bug in any core thread never leaves alarms waiting.

The agent runs as a process, as systemd runs it. A crash is injected into one thread through the
control socket's test seam (``inject``, simulated school only), exactly as a bug would raise at
that thread's next turn; then a button is pressed at once. The rule (docs/architecture.md): the
crash is logged once with its traceback, the thread restarted at once, and the press reaches
the centre; past the restart budget the process exits 70 and systemd's restart (played by the
test here) brings a fresh one that delivers.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from agent.box import control
from agent.errors import ControlError
from agent.supervision import EXIT_SOFTWARE
from agent.testing import SMALL_CAMERA
from agent.testing.broker import Mosquitto
from tests.conftest import wait_for
from tests.fault.conftest import Centre, Presser, fault_site, record_fault_line


def _deliver(presser: Presser, centre: Centre, timeout: float = 10) -> float:
    """Press once; seconds from the press to the alarm stored at the centre."""
    t0 = time.monotonic()
    [event] = presser.press()
    wait_for(lambda: event["event_id"] in centre.received_ids(), timeout, "the alarm at the centre")
    return time.monotonic() - t0


@pytest.mark.parametrize("thread", ["buttons", "uplink", "control", "clips", "supervisor"])
def test_a_crashed_thread_is_restarted_and_the_next_press_arrives(
    tmp_path: Path, broker: Mosquitto, thread: str
) -> None:
    with fault_site(f"crash-{thread}", tmp_path, broker, cameras=[SMALL_CAMERA]) as site:
        agent, centre, presser = site.agent, site.centre, site.presser
        _deliver(presser, centre)  # the path works before the crash
        t0 = time.monotonic()
        reply = control.call(presser.sock, {"cmd": "inject", "thread": thread})
        assert reply["ok"], reply
        press_s = _deliver(presser, centre)
        total_s = time.monotonic() - t0
        status = agent.status() or {}
        assert agent.proc is not None and agent.proc.poll() is None, "the agent died"
        assert status["thread_crashes"] == {thread: 1}
        assert status["uplink"]["state"] == "online"
        log = agent.output()
        crashes = [ln for ln in log.splitlines() if f"thread {thread} crashed" in ln]
        assert len(crashes) == 1 and "Traceback" in crashes[0] and "InjectedCrash" in crashes[0]
        assert "Exception in thread" not in log  # nothing died outside the rule
        record_fault_line(
            f"FAULT thread_crash[{thread}]: restarted=1 "
            f"inject_to_stored_ms={total_s * 1000:.0f} "
            f"press_to_stored_ms={press_s * 1000:.0f}"
        )


def test_a_spent_restart_budget_ends_the_process_and_a_restart_delivers(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with fault_site("crash-budget", tmp_path, broker, cameras=[SMALL_CAMERA]) as site:
        agent, centre, presser = site.agent, site.centre, site.presser
        for _ in range(5):  # the budget: five restarts a minute
            control.call(presser.sock, {"cmd": "inject", "thread": "uplink"})
        t0 = time.monotonic()
        with contextlib.suppress(ControlError):  # the process may be gone before it answers
            control.call(presser.sock, {"cmd": "inject", "thread": "uplink"})
        assert agent.proc is not None
        assert agent.proc.wait(5) == EXIT_SOFTWARE
        exit_s = time.monotonic() - t0
        assert "restart budget spent" in agent.output()
        assert "Current thread" in agent.output() or "Thread 0x" in agent.output()  # stacks
        agent.start()  # what systemd does after RestartSec
        wait_for(lambda: agent.uplink_state() == "online", 10, "the uplink online again")
        press_s = _deliver(presser, centre)
        record_fault_line(
            f"FAULT thread_crash_budget: exit_ms={exit_s * 1000:.0f} "
            f"press_after_restart_to_stored_ms={press_s * 1000:.0f}"
        )
