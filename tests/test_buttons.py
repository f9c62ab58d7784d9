"""Buttons on gpiozero's MockFactory, driven as a finger and a cable would drive them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from agent.config.model import ButtonConfig, Wiring
from agent.delivery.protocol import AlarmKind
from agent.hardware.buttons import ButtonBoard, ButtonError, ButtonEvent, Change, Timing
from agent.supervision import Supervisor
from tests.conftest import wait_for


class Recorder:
    def __init__(self) -> None:
        self.events: list[ButtonEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: ButtonEvent) -> dict[str, Any]:
        with self.lock:
            self.events.append(event)
        return {"kind": str(event.kind), "button_id": event.button_id}

    def kinds(self, button: str | None = None) -> list[AlarmKind]:
        """The MQTT alarms the events make (a release makes none)."""
        with self.lock:
            return [e.kind for e in self.events if button in (None, e.button_id) and e.kind]

    def changes(self, button: str | None = None) -> list[Change]:
        with self.lock:
            return [e.change for e in self.events if button in (None, e.button_id)]


def _button(bid: str, pin: int, wiring: str = "normally_open", hold_s: float = 0.0) -> ButtonConfig:
    return ButtonConfig(
        id=bid, pin=pin, location=f"{bid} room", wiring=Wiring(wiring), hold_s=hold_s, cameras=None
    )


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def _board(
    factory: MockFactory, rec: Recorder, *buttons: ButtonConfig, timing: Timing | None = None
) -> ButtonBoard:
    board = ButtonBoard(buttons, factory, rec, timing=timing or Timing(release_s=0.05))
    board.start()
    return board


@pytest.fixture
def board(factory: MockFactory, rec: Recorder) -> Iterator[ButtonBoard]:
    b = _board(
        factory, rec, _button("entrance", 17), _button("office", 22, wiring="normally_closed")
    )
    yield b
    b.stop()


def test_press_gives_one_alarm_at_once(
    board: ButtonBoard, factory: MockFactory, rec: Recorder
) -> None:
    t0 = time.time()
    result = board.simulate("entrance", True)
    assert result == [{"kind": "panic", "button_id": "entrance"}]
    [event] = rec.events
    assert event.kind is AlarmKind.PANIC and t0 <= event.wall_time <= time.time()


def test_bounce_storm_of_100_edges_in_50ms_is_one_alarm(
    board: ButtonBoard, factory: MockFactory, rec: Recorder
) -> None:
    pin = factory.pin(17)
    start = time.monotonic()
    for i in range(100):
        (pin.drive_low if i % 2 == 0 else pin.drive_high)()
        time.sleep(0.0004)
    assert time.monotonic() - start < 0.2
    pin.drive_high()
    time.sleep(0.3)
    assert rec.kinds() == [AlarmKind.PANIC]


def test_release_rearms_so_a_second_press_is_a_second_alarm(
    board: ButtonBoard, rec: Recorder
) -> None:
    board.simulate("entrance", True)
    board.simulate("entrance", False)
    time.sleep(0.15)
    board.simulate("entrance", True)
    assert rec.kinds() == [AlarmKind.PANIC, AlarmKind.PANIC]


def test_normally_closed_loop_opening_is_an_alarm(
    board: ButtonBoard, factory: MockFactory, rec: Recorder
) -> None:
    assert rec.events == []  # the simulated loop is closed at start: no false alarm
    factory.pin(22).drive_high()  # the loop opens: pressed, or the cable is cut
    wait_for(lambda: rec.kinds("office") == [AlarmKind.PANIC], 2, "an NC alarm")


def test_hold_s_ignores_a_tap_and_alarms_on_a_hold(factory: MockFactory, rec: Recorder) -> None:
    board = _board(factory, rec, _button("corridor", 23, hold_s=0.2))
    try:
        board.simulate("corridor", True)
        time.sleep(0.05)
        board.simulate("corridor", False)
        time.sleep(0.3)
        assert rec.kinds() == []
        board.simulate("corridor", True)
        wait_for(lambda: rec.kinds() == [AlarmKind.PANIC], 2, "the held press")
        assert board.snapshot()["corridor"]["state"] == "pressed"
    finally:
        board.stop()


def test_stuck_button_gives_one_alarm_one_fault_then_restore(
    factory: MockFactory, rec: Recorder
) -> None:
    board = _board(factory, rec, _button("gym", 24), timing=Timing(release_s=0.05, stuck_s=0.3))
    try:
        board.simulate("gym", True)
        time.sleep(1.0)  # held far longer than a press
        assert rec.kinds() == [AlarmKind.PANIC, AlarmKind.FAULT]
        assert board.snapshot()["gym"]["state"] == "stuck"
        board.simulate("gym", False)
        wait_for(lambda: rec.kinds()[-1:] == [AlarmKind.RESTORE], 2, "the restore")
        assert rec.changes() == [Change.PRESSED, Change.STUCK, Change.STUCK_CLEARED]
    finally:
        board.stop()


def test_a_release_is_reported_once_it_is_stable_and_is_no_alarm(
    board: ButtonBoard, factory: MockFactory, rec: Recorder
) -> None:
    board.simulate("entrance", True)
    pin = factory.pin(17)
    pin.drive_high()  # a bounce on release: the press has not ended yet
    pin.drive_low()
    assert rec.changes() == [Change.PRESSED]
    board.simulate("entrance", False)
    wait_for(lambda: rec.changes() == [Change.PRESSED, Change.RELEASED], 2, "the release")
    assert rec.kinds() == [AlarmKind.PANIC]  # the centre gets no alarm for a release


def test_cut_loop_at_start_is_a_fault_not_a_press(factory: MockFactory, rec: Recorder) -> None:
    board = ButtonBoard([_button("lab", 25, wiring="normally_closed")], factory, rec)
    board.start(close_mock_loops=False)  # the NC loop is open at power-up: a cut cable
    try:
        wait_for(lambda: rec.kinds() == [AlarmKind.FAULT], 2, "the start-up fault")
        assert rec.changes() == [Change.OPEN_AT_START]
        factory.pin(25).drive_low()  # the cable mended: the loop closes
        wait_for(
            lambda: rec.changes() == [Change.OPEN_AT_START, Change.OPEN_CLEARED],
            2,
            "the fault cleared, as a cable fault (not a stuck button)",
        )
        assert rec.kinds() == [AlarmKind.FAULT, AlarmKind.RESTORE]
    finally:
        board.stop()


def test_handler_failure_does_not_stop_other_buttons(factory: MockFactory) -> None:
    calls: list[str] = []

    def handler(event: ButtonEvent) -> None:
        calls.append(event.button_id)
        if event.button_id == "bad":
            raise RuntimeError("boom")

    board = ButtonBoard([_button("bad", 5), _button("good", 6)], factory, handler)
    board.start()
    try:
        board.simulate("bad", True)
        board.simulate("good", True)
        assert calls == ["bad", "good"] and board.alive
    finally:
        board.stop()


def test_a_pin_that_fails_to_open_leaves_the_others_working(
    factory: MockFactory, rec: Recorder
) -> None:
    from gpiozero import DigitalInputDevice

    squatter = DigitalInputDevice(17, pin_factory=factory)  # the pin is already taken
    board = _board(factory, rec, _button("entrance", 17), _button("gym", 24))
    try:
        assert board.snapshot()["entrance"]["state"] == "failed"
        board.simulate("gym", True)
        assert rec.kinds("gym") == [AlarmKind.PANIC]
    finally:
        board.stop()
        squatter.close()


def test_simulate_refuses_unknown_button(board: ButtonBoard) -> None:
    with pytest.raises(ButtonError, match="no button 'nope'"):
        board.simulate("nope", True)


class StepClock:
    """A clock the test moves by hand: the buttons thread may run as late as it likes."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_late_buttons_thread_never_mistakes_a_new_press_for_a_bounce(
    factory: MockFactory, rec: Recorder
) -> None:
    """Press, release, wait past release_s, press again: two alarms, even when the thread only
    gets to both edges after the re-arm timer was due (a busy CPU, a slow SD card fsync)."""
    clock = StepClock()
    board = ButtonBoard(
        [_button("entrance", 17)], factory, rec, timing=Timing(release_s=0.05), clock=clock
    )
    board.start()
    try:
        board.simulate("entrance", True)
        board.simulate("entrance", False)  # released at t=100.00; re-arm due at 100.05
        clock.now = 100.2  # the thread ran no timer since: the next edge is its first news
        factory.pin(17).drive_low()  # a finger, not simulate(): no other item goes first
        wait_for(lambda: len(rec.kinds()) == 2, 2, "the second alarm")
        assert rec.kinds() == [AlarmKind.PANIC, AlarmKind.PANIC]
    finally:
        board.stop()


@pytest.mark.parametrize("wiring", ["normally_open", "normally_closed"])
def test_a_crash_while_handling_a_press_still_raises_its_alarm(
    factory: MockFactory, rec: Recorder, wiring: str
) -> None:
    """The edge being handled when the thread crashed is gone; the restarted thread reads the
    pins and raises the alarm for the press that is still held (crash-only: agent/supervision.py).
    """
    failures = [1]

    def wall() -> float:  # read in the middle of handling the edge, after the level is taken
        if failures:
            failures.pop()
            raise RuntimeError("a bug in the middle of a press")
        return time.time()

    sup = Supervisor(give_up=lambda reason: pytest.fail(reason))
    board = ButtonBoard([_button("hall", 5, wiring=wiring)], factory, rec, wall=wall)
    board.start(supervisor=sup)
    try:
        pin = factory.pin(5)
        if wiring == "normally_open":
            pin.drive_low()  # pressed: the contact closes to ground
        else:
            pin.drive_high()  # pressed: the loop opens
        wait_for(lambda: rec.kinds("hall") == [AlarmKind.PANIC], 2, "the alarm after the restart")
        assert sup.status() == {"buttons": 1} and board.alive
    finally:
        board.stop()
