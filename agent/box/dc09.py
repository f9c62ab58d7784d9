"""The DC-09 path in the running agent: what the box's events become, and the ``dc09`` thread.

Every event the settings' ``events`` name goes to the centre's DC-09 receiver beside its MQTT
alarm (docs/dc09.md has the table). The two paths share only the moment of commit: an alarm's
DC-09 row is written in the alarm's own transaction, then each path's thread is woken and
drains its own rows (agent/delivery/dc09_queue.py), so a receiver that is down never delays
the MQTT alarm, nor a broker that is down the DC-09 one.

Where the events come from, and on which thread the daemon calls in:

- a button (``buttons``): a press is ``panic``, or ``holdup`` on a button marked so, or
  ``walk_test`` during a walk test; its release the matching restore; a long press ``stuck``
  and its release ``stuck_restore``; a button active at start-up ``cable_fault`` (an open
  loop) and its clearing ``cable_restore`` (:func:`button_event`);
- test mode on and off (whichever thread set it): ``test_start`` / ``test_end``;
- the MQTT path (the main thread's turn, :meth:`Dc09Path.mqtt_path`): ``path_fail`` once the
  uplink has been offline for as long as the centre takes to notice (its broker's will, 1.5 x
  keepalive), ``path_restore`` when it is back. Whether a restore is owed survives a restart.
- the transmitter itself: NULL polls and periodic test reports, never queued.

The other way round, the DC-09 path's failure and return go to the centre's MQTT desk as a
fault and a restore of the box, so each path reports the other's failure (docs/dc09.md, the
EN 50136 dual-path categories).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.clock import rfc3339, rfc3339_or_none
from agent.config.model import ButtonConfig, Config
from agent.delivery.dc09.events import BOX_ZONE, MQTT_PATH, Event, EventKind
from agent.delivery.dc09.settings import Settings
from agent.delivery.dc09.transmitter import Transmitter
from agent.delivery.dc09_queue import OutboxEventQueue
from agent.delivery.outbox import Companion, Outbox
from agent.delivery.protocol import AlarmKind
from agent.hardware.buttons import Change
from agent.supervision import Supervisor

Clock = Callable[[], float]

_TROUBLES = {
    Change.STUCK: EventKind.STUCK,
    Change.STUCK_CLEARED: EventKind.STUCK_RESTORE,
    Change.OPEN_AT_START: EventKind.CABLE_FAULT,
    Change.OPEN_CLEARED: EventKind.CABLE_RESTORE,
}


def button_event(change: Change, holdup: bool, walk_test: bool) -> EventKind | None:
    """What a button's change is on DC-09 (None: nothing). A walk test never sends PA or HA:
    presses go as ``walk_test``, so a centre that handles the standard codes does not
    dispatch; troubles stay troubles, because a stuck button is one during a test too."""
    if change is Change.PRESSED:
        return (
            EventKind.WALK_TEST if walk_test else (EventKind.HOLDUP if holdup else EventKind.PANIC)
        )
    if change is Change.RELEASED:
        return (
            None if walk_test else (EventKind.HOLDUP_RESTORE if holdup else EventKind.PANIC_RESTORE)
        )
    return _TROUBLES[change]


class Dc09Path:
    """Built by the daemon when the config has a ``dc09`` section; no I/O until :meth:`start`."""

    def __init__(
        self,
        cfg: Config,
        settings: Settings,
        outbox: Outbox,
        box_alarm: Callable[[AlarmKind, str], None],
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.queue = OutboxEventQueue(outbox)
        self.transmitter = Transmitter(settings, self.queue, on_path=self._on_path)
        self._box_alarm = box_alarm  # an MQTT alarm about the box (fault, restore)
        self._was_down = False  # the transmitter's last report (its thread only)
        self._site = cfg.site.name  # the location text of the box's own events
        self._clock = clock
        self._grace_s = 1.5 * cfg.mqtt.keepalive_s  # when the centre sees the box go
        self._offline_since: float | None = None  # main thread only
        self._mqtt_down = False

    def start(self, supervisor: Supervisor) -> None:
        self._mqtt_down = self.queue.mqtt_down()
        self.transmitter.start(supervisor)

    def stop(self) -> None:
        self.transmitter.stop()

    def wake(self) -> None:
        self.transmitter.wake()

    # --- events ------------------------------------------------------------------------------

    def for_button(self, button: ButtonConfig, change: Change, walk_test: bool) -> Event | None:
        """The button's event on this path, or None when it makes none or is not wanted."""
        kind = button_event(change, button.holdup, walk_test)
        if kind is None or kind not in self.settings.events:
            return None
        assert button.number is not None  # the config requires it with a dc09 section
        return Event(kind, button.number, button.location)

    def row(self, event: Event, at: float, event_id: str) -> Companion:
        """An alarm's DC-09 row, for the alarm's own transaction (``Outbox.add_alarm``)."""
        return self.queue.row(event, at, event_id)

    def add(self, event: Event, at: float, *, mqtt_down: bool | None = None) -> None:
        """An event only DC-09 carries: committed (or held, said loudly), then the thread
        woken; the transmitter's line says when the receiver has it."""
        self.queue.add(event, at, mqtt_down=mqtt_down)
        self.transmitter.wake()

    def test_mode(self, on: bool) -> None:
        kind = EventKind.TEST_START if on else EventKind.TEST_END
        if kind in self.settings.events:
            self.add(Event(kind, BOX_ZONE, self._site), time.time())

    def mqtt_path(self, online: bool) -> None:
        """Each turn of the main thread: the MQTT uplink's state, as the centre will see it."""
        if online:
            self._offline_since = None
            if self._mqtt_down:
                self._path(EventKind.PATH_RESTORE, down=False)
            return
        now = self._clock()
        if self._offline_since is None:
            self._offline_since = now
        if not self._mqtt_down and now - self._offline_since >= self._grace_s:
            self._path(EventKind.PATH_FAIL, down=True)

    def _path(self, kind: EventKind, down: bool) -> None:
        self._mqtt_down = down
        if kind in self.settings.events:
            self.add(Event(kind, MQTT_PATH, self._site), time.time(), mqtt_down=down)

    def _on_path(self, up: bool, why: str) -> None:
        """On the dc09 thread, which logged it already."""
        if not up:
            self._box_alarm(AlarmKind.FAULT, f"DC-09 path to the alarm receiver down: {why}")
        elif self._was_down:
            self._box_alarm(AlarmKind.RESTORE, f"DC-09 path restored via {why}")
        self._was_down = not up

    # --- status and health -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.transmitter.status()
        refused, recent = self.queue.refusals()
        return {
            "path": {True: "up", False: "down", None: "unknown"}[s.path_ok],
            "active": s.active,
            "queue": s.queue_depth,
            "acked": s.acked,
            "refused": refused,
            "refused_recent": [
                {"kind": r.kind, "zone": r.zone, "at": rfc3339(r.at), "reason": r.reason}
                for r in recent
            ],
            "mqtt_path_reported": "failed" if self._mqtt_down else "ok",
            "receivers": [
                {
                    "name": r.name,
                    "last_ack_at": rfc3339_or_none(r.last_ack_at),
                    "failures": r.failures,
                    "total_failures": r.total_failures,
                    "last_error": r.last_error,
                    "clock_offset_s": round(r.clock_offset_s, 1),
                }
                for r in s.receivers
            ],
        }
