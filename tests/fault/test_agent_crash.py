"""The agent is SIGKILLed at seeded random moments while another thread presses buttons as fast
as they re-arm (tens of commits a second), then restarted; many times.

After each kill, while the agent is down, the outbox must pass ``PRAGMA integrity_check``
(opened read-only: the test must not repair or checkpoint what it inspects). At the end every
press whose reply came back (the alarm was committed) must have reached the centre, and since
``seq`` is allocated in the commit itself, the seqs at the centre must have no gap at all:
an alarm that was committed but whose reply the kill swallowed arrives too.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agent.errors import AgentError
from agent.testing.broker import Mosquitto
from tests.fault.conftest import Presser, fault_seed, fault_site


def integrity(db: Path) -> tuple[str, int]:
    """(integrity_check result, alarms stored) from a read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        (result,) = conn.execute("PRAGMA integrity_check").fetchone()
        (alarms,) = conn.execute("SELECT COUNT(*) FROM messages WHERE priority = 0").fetchone()
    finally:
        conn.close()
    return str(result), int(alarms)


def _hammer(presser: Presser, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            presser.press()
        except AgentError:
            return  # the agent is gone; that press is not acknowledged


def _agent_kills(tmp_path: Path, broker: Mosquitto, name: str, kills: int, seed: int) -> None:
    fault_seed(name, seed)
    rng = random.Random(seed)
    storage = tmp_path / "state"
    checks: list[str] = []
    with fault_site(name, tmp_path, broker, start=False) as site:
        agent, tally = site.agent, site.tally
        for _ in range(kills):
            agent.start()
            stop = threading.Event()
            hammer = threading.Thread(target=_hammer, args=(site.presser, stop), daemon=True)
            hammer.start()
            time.sleep(rng.uniform(0.05, 0.8))
            agent.close()  # SIGKILL, mid-commit as often as not
            stop.set()
            hammer.join(15)
            result, _ = integrity(storage / "outbox.db")
            checks.append(result)
            assert result == "ok", f"outbox corrupt after a SIGKILL: {result}"
        agent.start()
        tally.wait_delivered(site.centre, 30)
        info = tally.report(
            site.centre,
            seed=seed,
            kills=kills,
            integrity_ok=f"{checks.count('ok')}/{len(checks)}",
            unacked_presses=tally.unacked_presses,
        )
        # Arrival order is not asserted: an alarm the broker acked just before a kill is
        # resent by the restarted agent only when the centre's receipt does not come.
        tally.assert_ok(info, in_order=False)
        assert tally.sent >= kills, "the hammer pressed (almost) nothing"


def test_agent_killed_while_writing_alarms(tmp_path: Path, broker: Mosquitto, seed: int) -> None:
    _agent_kills(tmp_path, broker, "agent_kill", kills=10, seed=seed)


@pytest.mark.slow
def test_soak_agent_killed_while_writing_alarms(
    tmp_path: Path, broker: Mosquitto, seed: int
) -> None:
    _agent_kills(tmp_path, broker, "soak_agent_kill", kills=80, seed=seed)
