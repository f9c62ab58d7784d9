"""The centre's receiver as the centre runs it: ``edge-agent central`` in a process of its own.

site.py's :class:`~agent.testing.site.Centre` runs the receiver in the caller's process, which
is what most tests want. A process is for what a thread cannot show: a receiver SIGKILLed in
the middle of a burst, two receivers racing on one ledger, a storm measured without the
measuring client in the receiver's interpreter, reconnects timed from the receiver's own
ledger. Its output goes to a log file beside its store; it dies with the process that started
it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from agent.centre.ledger import Ledger
from agent.clock import parse_rfc3339
from agent.testing.broker import die_with_parent
from agent.testing.stats import REPO

T = TypeVar("T")


class CentralProcess:
    """``edge-agent central --broker URL --store STORE --client-id ID ARGS…`` with ``env``
    added to its environment; its log is ``STORE.log``. :meth:`start`, then :meth:`stop`
    (SIGTERM) or :meth:`kill` (SIGKILL); both return its exit status, and may be called again
    after a new :meth:`start`."""

    def __init__(
        self,
        broker_url: str,
        store: Path,
        client_id: str,
        *args: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.store, self.log_path = store, store.with_suffix(".log")
        self.command = [
            *(sys.executable, "-m", "agent.cli", "central", "--broker", broker_url),
            *("--store", str(store), "--client-id", client_id, *args),
        ]
        self.env = {**os.environ, **env} if env else None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CentralProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,
            )
        return self

    def stop(self, timeout: float = 10.0) -> int:
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int:
        return self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        """Its log so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def ledger(self, read: Callable[[Ledger], T]) -> T:
        """``read`` on the receiver's SQLite ledger, opened for this one read."""
        ledger = Ledger.open(self.store)
        try:
            return read(ledger)
        finally:
            ledger.close()

    def subscribed_since(self, after: float) -> list[float] | None:
        """When each of its two links (alarms, video) was last subscribed, if both are up and
        were subscribed at or after ``after`` (wall clock), as the receiver recorded it in its
        ledger; else None (nor while it has no ledger yet)."""
        if not (self.store / "centre.db").exists():
            return None
        states = self.ledger(lambda led: led.links())
        times = [parse_rfc3339(s.regained_at) for s in states if s.up]
        ok = [t for t in times if t is not None and t >= after]
        return ok if len(states) == len(ok) == 2 else None
