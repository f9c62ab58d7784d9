"""Crash-only threads: the one rule for every long-lived thread of the agent.

A thread that dies quietly behind a live process is the worst failure an alarm box can have:
systemd sees a running service, presses are committed to the outbox, and nothing sends them.
So no long-lived thread is a bare ``threading.Thread``; each runs its body under a
:class:`Worker`, and the rule (also in docs/architecture.md) is:

1. If a body raises anything (even ``SystemExit``), or returns while the agent is not stopping,
   its traceback is logged once, at CRITICAL, and the body is started again at once on the same
   thread. Each body rebuilds its state from what is durable or physical (the outbox, the pins'
   levels), so a restart is the same code path as a start.
2. Restarts have a budget: more than ``max_crashes`` crashes of one thread within ``window_s``
   mean the fault is not transient, and the process exits with status 70 at once (systemd
   starts a fresh one within RestartSec). The pre-alarm video in memory is lost then; alarms
   are not, they are on disk.
3. Python cannot kill a hung thread, so a thread whose heartbeat stops for ``stall_s`` ends the
   process the same way, after every thread's stack is written to the log.
4. The supervisor's own periodic turn (the main thread) runs under rules 1 and 2 too.

Camera threads keep a rule of their own (agent/video/camera.py): a failing camera retries with
backoff and the others carry on, since a camera outage is expected weather, not a bug.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from agent.errors import AgentError

log = logging.getLogger("agent.supervision")

EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: an internal error; systemd restarts the agent

Clock = Callable[[], float]


class InjectedCrash(RuntimeError):
    """Raised inside a worker by :meth:`Supervisor.inject`: the test seam for rule 1."""


def exit_process(reason: str) -> None:
    """Rules 2 and 3: log, dump every thread's stack, and leave at once with status 70.

    ``os._exit`` rather than an orderly stop: a stop waits for threads, and one of them is
    broken or hung. What is committed is on disk; the broker's will tells the centre.
    """
    log.critical(
        "exiting with status %d so that systemd restarts the agent: %s", EXIT_SOFTWARE, reason
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(EXIT_SOFTWARE)


class Worker:
    """One supervised thread. The body loops until ``stopping`` is set, calling :meth:`beat`
    at least every second; ``wake`` (if given) makes a blocked body turn at once."""

    def __init__(
        self,
        name: str,
        body: Callable[[Worker], None],
        supervisor: Supervisor,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._body = body
        self._supervisor = supervisor
        self._wake = wake
        self.stopping = threading.Event()
        self.heartbeat = supervisor.clock()
        self.crashes = 0
        self.last_crash_at: float | None = None  # supervisor.clock() time of the last crash
        self._ready = False  # beaten since its last (re)start: its state is rebuilt
        self._crash_next = False  # test seams, taken at the next beat
        self._hang_s = 0.0
        self._crashed = threading.Condition()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the body to return, then wait for it (``timeout``: a hung body is left)."""
        self.stopping.set()
        self.wake()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def beat(self) -> None:
        """The body's proof of life, and the one point where a test may make it fail."""
        self.heartbeat = self._supervisor.clock()
        if not self._ready:
            with self._crashed:
                self._ready = True
                self._crashed.notify_all()
        if self._hang_s:
            hang, self._hang_s = self._hang_s, 0.0
            time.sleep(hang)
        if self._crash_next:
            self._crash_next = False
            raise InjectedCrash(f"a crash injected into thread {self.name} (test seam)")

    def _main(self) -> None:
        while True:
            try:
                self._body(self)
                if self.stopping.is_set():
                    return
                raise RuntimeError("the thread's loop returned although the agent is not stopping")
            except BaseException as exc:  # rule 1: nothing ends a worker quietly
                if self.stopping.is_set():
                    log.warning("thread %s failed while stopping: %s", self.name, exc)
                    return
                if not self._supervisor.crashed(self, exc):
                    with self._crashed:  # over budget: the process is on its way out
                        self._crashed.notify_all()
                    return

    def arm(self, *, crash: bool, hang_s: float = 0.0) -> int:
        """Test seam: at the next :meth:`beat`, hang ``hang_s`` and/or crash; returns the
        crash count to wait past."""
        with self._crashed:
            count = self.crashes
        self._hang_s = hang_s
        self._crash_next = crash
        self.wake()
        return count

    def count_crash(self) -> None:
        with self._crashed:
            self.crashes += 1
            self.last_crash_at = self._supervisor.clock()
            self._ready = False
            self._crashed.notify_all()

    def wait_crash(self, past: int, timeout: float) -> bool:
        """Until it has crashed since ``past`` and been restarted (beaten again): a test that
        acts next meets the restarted thread, not one still rebuilding its state."""
        with self._crashed:
            return self._crashed.wait_for(
                lambda: (
                    self.crashes > past and (self._ready or self._supervisor.gave_up is not None)
                ),
                timeout,
            )


class Supervisor:
    """Starts workers, restarts them by the rule above, and watches their heartbeats."""

    def __init__(
        self,
        *,
        max_crashes: int = 5,
        window_s: float = 60.0,
        stall_s: float = 15.0,
        give_up: Callable[[str], None] = exit_process,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_crashes = max_crashes
        self.window_s = window_s
        self.stall_s = stall_s
        self.clock = clock
        self._give_up = give_up
        self._workers: dict[str, Worker] = {}
        self._crash_times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.gave_up: str | None = None
        self._main = Worker("supervisor", lambda _w: None, self)  # the main thread's turn

    def spawn(
        self, name: str, body: Callable[[Worker], None], wake: Callable[[], None] | None = None
    ) -> Worker:
        worker = Worker(name, body, self, wake)
        with self._lock:
            self._workers[name] = worker
        worker.start()
        return worker

    def crashed(self, worker: Worker, exc: BaseException) -> bool:
        """Rule 1 and 2 for one crash; False when the budget is spent (the caller stops)."""
        worker.count_crash()
        now = self.clock()
        with self._lock:
            times = self._crash_times.setdefault(worker.name, deque())
            times.append(now)
            while times and times[0] < now - self.window_s:
                times.popleft()
            over = len(times) > self.max_crashes
        log.critical(
            "thread %s crashed (%s: %s); %s",
            worker.name,
            type(exc).__name__,
            exc,
            "restart budget spent" if over else "restarting it at once",
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if over:
            self._end(f"thread {worker.name} crashed {len(times)} times in {self.window_s:.0f} s")
            return False
        return True

    def run_turns(self, turn: Callable[[], None], interval_s: float, stop: threading.Event) -> None:
        """The main thread: ``turn`` every ``interval_s`` until ``stop``, under rules 1-3."""
        while not stop.wait(interval_s):
            try:
                self._main.beat()
                turn()
                self.check()
            except Exception as exc:  # rule 4: the supervisor's turn is supervised too
                if not self.crashed(self._main, exc):
                    return
                self._main.beat()  # restarted: the next turn is the loop going on

    def check(self) -> None:
        """Rule 3, and a last line of defence: a worker thread gone without a stop."""
        now = self.clock()
        for worker in self.workers():
            if worker.stopping.is_set():
                continue
            if not worker.alive:
                self._end(f"thread {worker.name} is gone")
            elif now - worker.heartbeat > self.stall_s:
                self._end(f"thread {worker.name} has been stuck for {now - worker.heartbeat:.0f} s")

    def stale(self, within_s: float, names: tuple[str, ...]) -> list[str]:
        """Which of ``names`` have not beaten within ``within_s`` (or are not running)."""
        now = self.clock()
        out = []
        for name in names:
            w = self._workers.get(name)
            if w is None or not w.alive or now - w.heartbeat > within_s:
                out.append(name)
        return out

    def worker(self, name: str) -> Worker:
        """A worker by name; ``supervisor`` is the main thread's turn."""
        worker = self._main if name == "supervisor" else self._workers.get(name)
        if worker is None:
            known = ", ".join(["supervisor", *self._workers])
            raise AgentError(f"no thread {name!r}; known: {known}")
        return worker

    def workers(self) -> list[Worker]:
        with self._lock:
            return list(self._workers.values())

    def status(self) -> dict[str, int]:
        """Crashes so far per thread, for ``status``: a restart is recovered, not invisible."""
        return {w.name: w.crashes for w in [*self.workers(), self._main] if w.crashes}

    def inject(self, name: str, *, hang_s: float = 0.0, timeout: float = 5.0) -> None:
        """Test seam: thread ``name`` crashes at its next beat (returns once it has been
        restarted), or with ``hang_s`` hangs that long there instead. ``supervisor`` is the
        main thread's turn."""
        worker = self.worker(name)
        past = worker.arm(crash=not hang_s, hang_s=hang_s)
        if not hang_s and not worker.wait_crash(past, timeout):
            raise AgentError(f"thread {name} did not reach its next beat within {timeout:.0f} s")

    def _end(self, reason: str) -> None:
        if self.gave_up is None:
            self.gave_up = reason
            self._give_up(reason)


def log_thread_exceptions() -> None:
    """Any other thread (a control connection, a fetch) that dies still leaves one log line
    with its traceback in the journal, not bare text on stderr."""

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        log.error(
            "thread %s died: %s",
            name,
            args.exc_value,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )

    threading.excepthook = hook
