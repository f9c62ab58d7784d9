"""The LED/buzzer patterns on mock pins, read back as a meter on the pin would see them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from agent.config.model import IndicatorsConfig
from agent.hardware.indicators import Indicators, Pattern


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ind(factory: MockFactory, clock: FakeClock) -> Iterator[Indicators]:
    i = Indicators(IndicatorsConfig(led_pin=5, buzzer_pin=6, ack_timeout_s=60), factory, clock)
    i.start()
    yield i
    i.stop()


def _toggles(factory: MockFactory, pin: int, seconds: float) -> int:
    p = factory.pin(pin)
    p.clear_states()
    time.sleep(seconds)
    return len(p.states) - 1


def test_alarm_blinks_until_the_centre_acknowledges_then_steady(
    ind: Indicators, factory: MockFactory
) -> None:
    ind.alarm("ev-1")
    assert ind.pattern is Pattern.WAITING
    assert 2 <= _toggles(factory, 5, 1.6) <= 5  # 1 Hz
    assert not ind.acknowledged("some-other-event")
    assert ind.acknowledged("ev-1")
    assert _toggles(factory, 5, 0.5) == 0 and factory.pin(5).state == 1
    assert factory.pin(6).state == 1  # the buzzer follows the LED


def test_no_centre_listening_blinks_fast(ind: Indicators, factory: MockFactory) -> None:
    ind.centre(False)
    ind.alarm("ev-1")
    assert ind.pattern is Pattern.NO_CENTRE
    assert _toggles(factory, 5, 1.0) >= 6  # 4 Hz
    ind.centre(True)
    assert ind.pattern is Pattern.WAITING


def test_timeout_and_local_reset_turn_it_off(
    ind: Indicators, factory: MockFactory, clock: FakeClock
) -> None:
    ind.alarm("ev-1")
    ind.acknowledged("ev-1")
    clock.now += 59
    ind.tick()
    assert ind.pattern is Pattern.ACKNOWLEDGED
    clock.now += 2
    ind.tick()
    assert ind.pattern is Pattern.OFF and factory.pin(5).state == 0
    ind.alarm("ev-2")
    ind.reset()
    assert ind.pattern is Pattern.OFF and factory.pin(6).state == 0


def test_no_pins_configured_is_fine(factory: MockFactory) -> None:
    i = Indicators(IndicatorsConfig(), factory)
    i.start()
    i.alarm("x")
    assert i.pattern is Pattern.WAITING
    i.stop()


def test_an_ack_that_beats_the_alarm_to_the_indicator_is_kept(
    ind: Indicators, factory: MockFactory
) -> None:
    assert not ind.acknowledged("ev-9")  # the centre was faster than the buttons thread
    ind.alarm("ev-9")
    assert ind.pattern is Pattern.ACKNOWLEDGED and factory.pin(5).state == 1


def test_waiting_times_out_even_while_the_centre_is_polled(
    ind: Indicators, clock: FakeClock
) -> None:
    ind.alarm("ev-1")
    for _ in range(61):  # the daemon reports presence and ticks every second
        clock.now += 1
        ind.centre(True)
        ind.tick()
    assert ind.pattern is Pattern.OFF
