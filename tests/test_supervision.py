"""The crash-only rule (agent/supervision.py) on real threads: restart at once, a budget, stalls."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from agent.errors import AgentError
from agent.supervision import InjectedCrash, Supervisor, Worker
from tests.conftest import wait_for


class Recorder:
    """Stands in for os._exit: what the supervisor would have ended the process for."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


Body = Callable[[Worker], None]


def looping(runs: list[int], fail: Callable[[int], BaseException | None]) -> Body:
    """A body that counts its starts and fails as ``fail(start number)`` says, else loops."""

    def body(worker: Worker) -> None:
        runs.append(len(runs) + 1)
        exc = fail(len(runs))
        if exc is not None:
            raise exc
        while not worker.stopping.wait(0.01):
            worker.beat()

    return body


@pytest.mark.parametrize(
    "exc",
    [ValueError("a bug"), SystemExit(3), KeyboardInterrupt(), None],
    ids=["exception", "SystemExit", "KeyboardInterrupt", "returned"],
)
def test_a_crashed_thread_is_restarted_at_once_and_logged_once(
    exc: BaseException | None, caplog: pytest.LogCaptureFixture
) -> None:
    give_up = Recorder()
    sup = Supervisor(give_up=give_up)
    runs: list[int] = []

    def body(worker: Worker) -> None:
        runs.append(1)
        if len(runs) == 1:
            if exc is not None:
                raise exc
            return  # returning while not stopping is a crash too
        while not worker.stopping.wait(0.01):
            worker.beat()

    with caplog.at_level(logging.INFO, logger="agent.supervision"):
        t0 = time.monotonic()
        worker = sup.spawn("t", body)
        wait_for(lambda: len(runs) == 2, 2, "the restart")
        restart_s = time.monotonic() - t0
        worker.stop()
    crit = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(crit) == 1 and "thread t crashed" in crit[0].getMessage()
    assert crit[0].exc_info is not None  # the traceback, once
    assert worker.crashes == 1 and not give_up.reasons and not worker.alive
    assert restart_s < 0.5
    assert sup.status() == {"t": 1}


def test_the_restart_budget_ends_the_process() -> None:
    give_up = Recorder()
    sup = Supervisor(max_crashes=3, window_s=60, give_up=give_up)
    runs: list[int] = []
    worker = sup.spawn("flaky", looping(runs, lambda n: RuntimeError(f"crash {n}")))
    wait_for(lambda: give_up.reasons, 2, "the supervisor to give up")
    assert give_up.reasons == ["thread flaky crashed 4 times in 60 s"]
    assert len(runs) == 4  # three restarts, then the fourth crash spent the budget
    wait_for(lambda: not worker.alive, 2, "the worker to end")


def test_crashes_outside_the_window_do_not_count() -> None:
    now = [0.0]
    give_up = Recorder()
    sup = Supervisor(max_crashes=1, window_s=10, give_up=give_up, clock=lambda: now[0])
    worker = sup.spawn("w", looping([], lambda n: None))
    for i in range(3):
        now[0] += 11  # each crash alone in its window
        sup.inject("w")
        assert worker.crashes == i + 1
    assert not give_up.reasons
    sup.inject("w")  # a second one within 10 s
    wait_for(lambda: give_up.reasons, 2, "the budget")
    worker.stop()


def test_a_hung_thread_ends_the_process() -> None:
    give_up = Recorder()
    sup = Supervisor(stall_s=0.3, give_up=give_up)
    worker = sup.spawn("w", looping([], lambda n: None))
    sup.check()
    assert not give_up.reasons and sup.stale(0.2, ("w",)) == []
    sup.inject("w", hang_s=1.0)
    wait_for(lambda: sup.stale(0.2, ("w",)) == ["w"], 2, "a stale heartbeat")
    wait_for(lambda: (sup.check(), give_up.reasons)[1], 2, "the stall to end the process")
    assert give_up.reasons[0].startswith("thread w has been stuck for")
    worker.stop()


def test_the_supervisors_own_turn_is_supervised() -> None:
    give_up = Recorder()
    sup = Supervisor(max_crashes=2, give_up=give_up)
    stop = threading.Event()
    turns: list[int] = []

    def turn() -> None:
        turns.append(1)
        if len(turns) in (2, 4, 5):
            raise OSError("a failing disk")

    runner = threading.Thread(target=sup.run_turns, args=(turn, 0.01, stop))
    runner.start()
    runner.join(5)
    assert give_up.reasons == ["thread supervisor crashed 3 times in 60 s"]
    assert len(turns) == 5  # it carried on after the first two crashes


def test_inject_names_the_known_threads() -> None:
    sup = Supervisor(give_up=Recorder())
    worker = sup.spawn("buttons", looping([], lambda n: None))
    with pytest.raises(AgentError, match="known: supervisor, buttons"):
        sup.inject("uplnk")
    worker.stop()


def test_beat_raises_the_injected_crash_on_the_workers_own_thread() -> None:
    sup = Supervisor(give_up=Recorder())
    seen: list[tuple[str, type[BaseException]]] = []

    def body(worker: Worker) -> None:
        try:
            while not worker.stopping.wait(0.01):
                worker.beat()
        except BaseException as exc:
            seen.append((threading.current_thread().name, type(exc)))
            raise

    worker = sup.spawn("cam", body)
    sup.inject("cam")
    worker.stop()
    assert seen == [("cam", InjectedCrash)]
