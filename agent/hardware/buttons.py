"""Panic buttons: GPIO edges in, one alarm per press out.

gpiozero sits behind a factory chosen in one place (:func:`make_pin_factory`), so the daemon
runs unchanged on a Pi (lgpio) and on the simulated school (``MockFactory``).

Why our own debounce: gpiozero's ``bounce_time`` is not emulated by MockPin and, on real pins,
drops edges instead of settling them. We trigger on the FIRST edge of a press (the fastest
possible alarm; a contact bounces only after it has closed) and re-arm only after the button
has been released and stayed released for ``release_s``. A bounce storm therefore gives one
alarm, and a press that stays down for ``stuck_s`` gives that one alarm plus one fault.

The board reports what a button did (:class:`Change`), not what to send: the daemon decides
what each path makes of it (an MQTT alarm for a press, none for a release; on DC-09 a restore
where configured). A fault says whether the button was held too long or was already active
at start-up, and its clearing says the same, since DC-09 reports the two differently.
``hold_s`` > 0 asks for the press to be held that long first: a filter for long cable runs.

Threading: pin callbacks (gpiozero's or lgpio's threads, or the caller of MockPin.drive_low)
only put the edge on a queue. One thread, ``buttons``, owns all button state and runs the
state machines and timers; it is also where the alarm handler runs, so the handler sees
presses strictly in order. Nothing here waits on the network.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from gpiozero import DigitalInputDevice
from gpiozero.pins import Factory
from gpiozero.pins.mock import MockFactory

from agent.config.model import ButtonConfig
from agent.delivery.protocol import AlarmKind
from agent.errors import AgentError
from agent.supervision import Supervisor, Worker

log = logging.getLogger("agent.buttons")

Clock = Callable[[], float]


class ButtonError(AgentError, RuntimeError):
    """A button could not be set up (pin busy, no GPIO chip, unknown backend)."""


class ButtonState(enum.StrEnum):
    IDLE = "idle"
    HOLDING = "holding"  # pressed, waiting for hold_s before it counts
    PRESSED = "pressed"  # alarm raised, waiting for a stable release
    STUCK = "stuck"  # pressed far longer than a press: fault raised
    FAILED = "failed"  # the pin could not be opened


class Change(enum.StrEnum):
    PRESSED = "pressed"  # a press (after hold_s): an alarm
    RELEASED = "released"  # that press ended, stably released
    STUCK = "stuck"  # pressed far longer than a press: a fault
    STUCK_CLEARED = "stuck_cleared"  # the stuck button released
    OPEN_AT_START = "open_at_start"  # active at start-up: a stuck button or a cut loop
    OPEN_CLEARED = "open_cleared"  # that cleared


_ALARM_KINDS = {
    Change.PRESSED: AlarmKind.PANIC,
    Change.STUCK: AlarmKind.FAULT,
    Change.OPEN_AT_START: AlarmKind.FAULT,
    Change.STUCK_CLEARED: AlarmKind.RESTORE,
    Change.OPEN_CLEARED: AlarmKind.RESTORE,
}


@dataclass(frozen=True, slots=True)
class ButtonEvent:
    """What the buttons thread reports to the daemon; times are taken at the edge."""

    button_id: str
    change: Change
    wall_time: float
    detail: str = ""

    @property
    def kind(self) -> AlarmKind | None:
        """The MQTT alarm it makes (docs/protocol.md), or None: a release is not one."""
        return _ALARM_KINDS.get(self.change)


@dataclass(frozen=True, slots=True)
class Timing:
    release_s: float = 0.05  # released this long = re-armed
    stuck_s: float = 30.0  # pressed this long = stuck (fault)


def make_pin_factory(backend: str) -> Factory | None:
    """The one place the GPIO backend is chosen. ``None`` lets gpiozero pick (auto)."""
    if backend == "mock":
        return MockFactory()
    if backend == "auto":
        return None
    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name == backend:
            try:
                factory: Factory = ep.load()()
            except Exception as exc:  # any backend failure; the message says which
                raise ButtonError(
                    f"GPIO backend '{backend}' failed to start: {exc}. On a Pi install "
                    "python3-lgpio; elsewhere use gpio.backend: mock"
                ) from exc
            return factory
    raise ButtonError(f"GPIO backend '{backend}' is not installed")


class _Button:
    """One button's state machine; touched only by the buttons thread."""

    def __init__(self, cfg: ButtonConfig) -> None:
        self.cfg = cfg
        self.state = ButtonState.IDLE
        self.active = False  # the level as last reported: True = pressed / loop open
        self.changed_at = 0.0  # monotonic time of the last level change
        self.pressed_at_wall = 0.0
        self.deadline: float | None = None  # next timer for this button
        self.presses = 0
        self.open_at_start = False  # its fault was raised at start-up, not by a long press


class ButtonBoard:
    """All buttons of the site. ``start()`` opens the pins; nothing is opened in __init__."""

    def __init__(
        self,
        buttons: Iterable[ButtonConfig],
        factory: Factory | None,
        on_event: Callable[[ButtonEvent], Any],
        *,
        timing: Timing | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self._buttons = {b.id: _Button(b) for b in buttons}
        self._factory = factory
        self._on_event = on_event
        self._timing = timing or Timing()
        self._clock = clock
        self._wall = wall
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._devices: dict[str, DigitalInputDevice] = {}
        self._worker: Worker | None = None
        self._close_mock_loops = False

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, close_mock_loops: bool = True, supervisor: Supervisor | None = None) -> None:
        """Open every pin; a pin that fails is logged and marked failed, the rest still work.
        The ``buttons`` thread runs under ``supervisor`` (agent/supervision.py).

        On the mock backend, ``close_mock_loops`` wires the simulated school as installed:
        every normally-closed loop closed (its pin low). Tests pass False for a cut cable.
        """
        self._close_mock_loops = close_mock_loops and isinstance(self._factory, MockFactory)
        for b in self._buttons.values():
            try:
                self._open(b)
            except Exception as exc:  # gpiozero raises many types; one button must not stop all
                b.state = ButtonState.FAILED
                log.error("button %s (GPIO %d) failed to open: %s", b.cfg.id, b.cfg.pin, exc)
        self._worker = (supervisor or Supervisor()).spawn(
            "buttons", self._run, wake=lambda: self._queue.put(("tick",))
        )

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        for dev in self._devices.values():
            dev.close()
        self._devices.clear()

    def _open(self, b: _Button) -> None:
        dev = DigitalInputDevice(b.cfg.pin, pull_up=True, pin_factory=self._factory)
        # With the pull-up, the pin reads low when a normally-open button closes to ground,
        # and high when a normally-closed loop opens (pressed, or the cable is cut).
        nc = b.cfg.wiring == "normally_closed"
        if nc and self._close_mock_loops:
            dev.pin.drive_low()
        bid = b.cfg.id
        dev.when_activated = lambda: self._queue.put(("edge", bid, not nc, self._clock()))
        dev.when_deactivated = lambda: self._queue.put(("edge", bid, nc, self._clock()))
        self._devices[bid] = dev
        b.active = bool(dev.is_active) != nc
        b.changed_at = self._clock()
        if b.active:
            # Active at start-up: a stuck button or a cut loop. Say so once; do not call it a press.
            b.state, b.open_at_start = ButtonState.STUCK, True
            self._queue.put(("fault", bid, "active at start-up: stuck button or open loop"))
        log.info("button %s on GPIO %d (%s) ready", bid, b.cfg.pin, b.cfg.wiring)

    # --- simulation and status (any thread) -------------------------------------------------

    def simulate(self, button_id: str, pressed: bool, timeout: float = 5.0) -> list[Any]:
        """Drive a mock pin as a finger would, and wait until the buttons thread handled it.

        Returns what the handler returned for each event that edge produced (an alarm is
        committed by the handler before this returns). Only for the mock backend: the
        simulated school and the end-to-end tests.
        """
        if not isinstance(self._factory, MockFactory):
            raise ButtonError("simulate works only with gpio.backend: mock")
        b = self._buttons.get(button_id)
        if b is None:
            raise ButtonError(f"no button '{button_id}'; known: {', '.join(self._buttons)}")
        pin = self._factory.pin(b.cfg.pin)
        level_low = pressed != (b.cfg.wiring == "normally_closed")
        done = threading.Event()
        events: list[Any] = []
        self._queue.put(("collect", events))
        if level_low:
            pin.drive_low()
        else:
            pin.drive_high()
        self._queue.put(("barrier", done))
        if not done.wait(timeout):
            raise ButtonError("the buttons thread did not answer in time")
        return events

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each button's state for ``status``; a racy read of simple fields is fine here."""
        return {
            bid: {
                "state": str(b.state),
                "pin": b.cfg.pin,
                "presses": b.presses,
                "location": b.cfg.location,
            }
            for bid, b in self._buttons.items()
        }

    @property
    def alive(self) -> bool:
        return self._worker is not None and self._worker.alive

    # --- the buttons thread -----------------------------------------------------------------

    def _run(self, worker: Worker) -> None:
        """The thread's body; after a crash it runs again from the top, from the pins."""
        self._resync()
        collecting: list[Any] | None = None
        while not worker.stopping.is_set():
            worker.beat()
            now = self._clock()
            deadlines = [b.deadline for b in self._buttons.values() if b.deadline is not None]
            timeout = max(0.0, min(deadlines) - now) if deadlines else 1.0
            try:
                item = self._queue.get(timeout=min(timeout, 1.0))
            except queue.Empty:
                item = ("tick",)
            match item:
                case ("edge", bid, active, at):
                    # Timers due before this edge happened fire first, whenever the thread got
                    # round to it: a release that was stable for release_s re-arms the button,
                    # so a late thread cannot mistake the next real press for a bounce.
                    self._timers(collecting, at)
                    self._edge(self._buttons[bid], active, at, collecting)
                case ("fault", bid, detail):
                    self._emit(self._buttons[bid], Change.OPEN_AT_START, detail, collecting)
                case ("collect", events):
                    collecting = events
                case ("barrier", done):
                    collecting = None
                    done.set()
            self._timers(collecting, self._clock())

    def _resync(self) -> None:
        """After a crash the pins, not the state machines, are the truth: the edge being
        handled when the thread failed is gone, but a press lasts far longer than a restart,
        so a pin that reads pressed on a button that raised nothing for it is a press now."""
        now = self._clock()
        for bid, dev in list(self._devices.items()):
            b = self._buttons[bid]
            if b.state in (ButtonState.IDLE, ButtonState.HOLDING):
                b.state, b.active, b.deadline = ButtonState.IDLE, False, None
            level = bool(dev.is_active) != (b.cfg.wiring == "normally_closed")
            self._edge(b, level, now, None)

    def _edge(self, b: _Button, active: bool, at: float, out: list[Any] | None) -> None:
        if active == b.active:
            return
        b.active, b.changed_at = active, at
        if active and b.state is ButtonState.IDLE:
            b.pressed_at_wall = self._wall() - (self._clock() - at)
            if b.cfg.hold_s > 0:
                b.state, b.deadline = ButtonState.HOLDING, at + b.cfg.hold_s
            else:
                self._press(b, out)
        elif not active and b.state is ButtonState.HOLDING:
            b.state, b.deadline = ButtonState.IDLE, None
            log.info("button %s released before hold_s=%.2fs: no alarm", b.cfg.id, b.cfg.hold_s)
        elif not active:
            b.deadline = at + self._timing.release_s
        elif b.state is ButtonState.PRESSED:
            b.deadline = b.changed_at + self._timing.stuck_s
        else:
            b.deadline = None  # STUCK and pressed again: stay stuck, wait for a release

    def _timers(self, out: list[Any] | None, now: float) -> None:
        for b in self._buttons.values():
            if b.deadline is None or b.deadline > now:
                continue
            b.deadline = None
            if b.state is ButtonState.HOLDING and b.active:
                self._press(b, out)
            elif b.state is ButtonState.PRESSED and b.active:
                b.state = ButtonState.STUCK
                self._emit(
                    b,
                    Change.STUCK,
                    f"pressed for over {self._timing.stuck_s:.0f} s: stuck button or open loop",
                    out,
                )
            elif not b.active and b.state is ButtonState.STUCK:
                b.state = ButtonState.IDLE
                cleared = Change.OPEN_CLEARED if b.open_at_start else Change.STUCK_CLEARED
                b.open_at_start = False
                self._emit(b, cleared, "released", out)
            elif not b.active and b.state is ButtonState.PRESSED:
                b.state = ButtonState.IDLE
                self._emit(b, Change.RELEASED, "", out)

    def _press(self, b: _Button, out: list[Any] | None) -> None:
        b.state = ButtonState.PRESSED
        b.presses += 1
        b.deadline = b.changed_at + self._timing.stuck_s
        self._emit(b, Change.PRESSED, "", out, wall=b.pressed_at_wall)

    def _emit(
        self,
        b: _Button,
        change: Change,
        detail: str,
        out: list[Any] | None,
        wall: float | None = None,
    ) -> None:
        event = ButtonEvent(b.cfg.id, change, wall if wall is not None else self._wall(), detail)
        try:
            result = self._on_event(event)
        except Exception:  # the handler must never kill the thread that watches every button
            log.exception("alarm handler failed for button %s", b.cfg.id)
            result = None
        if out is not None:
            out.append(result)
