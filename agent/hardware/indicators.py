"""The box's LED and buzzer: what the people in the school can see of an alarm's fate.

    no alarm, or timed out / reset          off
    alarm raised, waiting for the centre    slow blink (1 Hz)
    alarm raised, NO centre listening       fast blink (4 Hz): it reached only the broker
    the centre acknowledged ("help is coming")   steady on

Outputs are gpiozero devices on the same pin factory as the buttons, so the simulated school
shows them on mock pins. All methods are called from the daemon's threads and take the lock.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from gpiozero import DigitalOutputDevice
from gpiozero.pins import Factory

from agent.config.model import IndicatorsConfig

log = logging.getLogger("agent.indicators")


class Pattern(enum.StrEnum):
    OFF = "off"
    WAITING = "waiting"  # slow blink
    NO_CENTRE = "no_centre"  # fast blink
    ACKNOWLEDGED = "acknowledged"  # steady


_BLINK = {Pattern.WAITING: 0.5, Pattern.NO_CENTRE: 0.125}  # seconds on, and off


class Indicators:
    def __init__(
        self,
        cfg: IndicatorsConfig,
        factory: Factory | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._factory = factory
        self._clock = clock
        self._devices: list[DigitalOutputDevice] = []
        # Guards every field below; held only to change the pattern, never while blocking.
        self._lock = threading.Lock()
        self.pattern = Pattern.OFF
        self.event_id: str | None = None
        self._since = 0.0
        self._centre_present: bool | None = None
        # An ack can beat the alarm to the indicator (the uplink is woken first): remember it.
        self._early_acks: set[str] = set()

    def start(self) -> None:
        for pin in (self._cfg.led_pin, self._cfg.buzzer_pin):
            if pin is None:
                continue
            try:
                self._devices.append(DigitalOutputDevice(pin, pin_factory=self._factory))
            except Exception as exc:  # a broken output must not stop the agent
                log.error("indicator on GPIO %d failed to open: %s", pin, exc)

    def stop(self) -> None:
        for dev in self._devices:
            dev.close()
        self._devices.clear()

    def alarm(self, event_id: str) -> None:
        with self._lock:
            self.event_id = event_id
            self._since = self._clock()
            if event_id in self._early_acks:
                self._early_acks.discard(event_id)
                self._set(Pattern.ACKNOWLEDGED)
                return
            self._set(Pattern.NO_CENTRE if self._centre_present is False else Pattern.WAITING)

    def acknowledged(self, event_id: str) -> bool:
        """The centre acknowledged this alarm; False if it is not the one shown."""
        with self._lock:
            if event_id != self.event_id:
                if len(self._early_acks) < 64:  # bounded: a stream of stray acks is no memory leak
                    self._early_acks.add(event_id)
                return False
            self._set(Pattern.ACKNOWLEDGED)
            return True

    def centre(self, present: bool | None) -> None:
        with self._lock:
            self._centre_present = present
            wanted = Pattern.NO_CENTRE if present is False else Pattern.WAITING
            if self.pattern in (Pattern.WAITING, Pattern.NO_CENTRE) and wanted is not self.pattern:
                self._set(wanted)  # polled every second: only a change restarts the blink

    def reset(self) -> None:
        with self._lock:
            self.event_id = None
            self._set(Pattern.OFF)

    def tick(self) -> None:
        """Called about once a second: an alarm's indication ends after ack_timeout_s."""
        with self._lock:
            expired = self._clock() - self._since >= self._cfg.ack_timeout_s
            if self.pattern is not Pattern.OFF and expired:
                self.event_id = None
                self._set(Pattern.OFF)

    def _set(self, pattern: Pattern) -> None:
        if pattern is not self.pattern:
            log.info("indicator: %s%s", pattern, f" ({self.event_id})" if self.event_id else "")
        if pattern is Pattern.ACKNOWLEDGED and self.pattern is not pattern:
            self._since = self._clock()  # steady for ack_timeout_s from the acknowledgement
        self.pattern = pattern
        for dev in self._devices:
            if pattern is Pattern.OFF:
                dev.off()
            elif pattern is Pattern.ACKNOWLEDGED:
                dev.on()
            else:
                dev.blink(on_time=_BLINK[pattern], off_time=_BLINK[pattern])
