"""What the box's events become on DC-09 (agent/box/dc09.py), without sockets: the table, the
settings' choice of events, and the MQTT path's failure as the centre will see it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from agent.box.dc09 import Dc09Path, button_event
from agent.config import parse_config
from agent.delivery.dc09.events import Event, EventKind
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import AlarmKind
from agent.hardware.buttons import Change
from agent.supervision import Supervisor

K = EventKind
TABLE = {  # (change, hold-up button, during a walk test) -> event
    (Change.PRESSED, False, False): K.PANIC,
    (Change.PRESSED, True, False): K.HOLDUP,
    (Change.PRESSED, False, True): K.WALK_TEST,
    (Change.PRESSED, True, True): K.WALK_TEST,  # never HA during a test: nobody dispatches
    (Change.RELEASED, False, False): K.PANIC_RESTORE,
    (Change.RELEASED, True, False): K.HOLDUP_RESTORE,
    (Change.RELEASED, False, True): None,
    (Change.RELEASED, True, True): None,
}


@pytest.mark.parametrize(
    ("change", "holdup", "test"), list(itertools.product(Change, (False, True), (False, True)))
)
def test_the_table(change: Change, holdup: bool, test: bool) -> None:
    troubles = {
        Change.STUCK: K.STUCK,
        Change.STUCK_CLEARED: K.STUCK_RESTORE,
        Change.OPEN_AT_START: K.CABLE_FAULT,
        Change.OPEN_CLEARED: K.CABLE_RESTORE,
    }
    want = TABLE.get((change, holdup, test), troubles.get(change))
    assert button_event(change, holdup, test) is want


CONFIG = """\
site: {id: school-042, name: School 42}
mqtt: {host: 127.0.0.1, keepalive_s: 10}
buttons:
  - {id: entrance, pin: 17, location: Main entrance, number: 7}
dc09:
  account: "1234"
  receivers: [{host: 127.0.0.1, port: 9}]
"""


class Path09:
    """A Dc09Path on a real outbox with a hand-moved clock; its thread is never started."""

    def __init__(self, tmp_path: Path, events: str = "") -> None:
        self.cfg = parse_config(CONFIG + events)
        assert self.cfg.dc09 is not None
        self.now = 1000.0
        self.alarms: list[tuple[AlarmKind, str]] = []
        self.outbox = Outbox.open(tmp_path / "outbox.db")
        self.path = self.make()

    def make(self) -> Dc09Path:
        assert self.cfg.dc09 is not None
        return Dc09Path(
            self.cfg,
            self.cfg.dc09.settings,
            self.outbox,
            lambda kind, detail: self.alarms.append((kind, detail)),
            clock=lambda: self.now,
        )

    def queued(self) -> list[tuple[str, int, str]]:
        out = []
        while (item := self.path.queue.next_event()) is not None:
            out.append((str(item.event.kind), item.event.zone, item.event.location))
            self.path.queue.acked(item.id)
        return out


def test_only_the_events_the_settings_name(tmp_path: Path) -> None:
    p = Path09(tmp_path, "  events: [holdup, stuck]\n")
    [button] = p.cfg.buttons
    assert p.path.for_button(button, Change.PRESSED, False) is None  # panic: not listed
    assert p.path.for_button(button, Change.STUCK, False) == Event(K.STUCK, 7, "Main entrance")
    p.path.test_mode(True)
    p.path.mqtt_path(False)
    p.now += 60
    p.path.mqtt_path(False)
    assert p.queued() == []


def test_the_mqtt_path_fails_when_the_centre_would_notice_and_the_restore_is_owed(
    tmp_path: Path,
) -> None:
    p = Path09(tmp_path)
    p.path.mqtt_path(True)
    p.path.mqtt_path(False)  # offline: the centre's broker publishes the will after 15 s
    p.now += 14
    p.path.mqtt_path(False)
    p.path.mqtt_path(True)  # back within it: nothing to report
    p.path.mqtt_path(False)
    p.now += 15
    p.path.mqtt_path(False)
    p.now += 60
    p.path.mqtt_path(False)  # once
    assert p.queued() == [("path_fail", 1, "School 42")]
    p.path = p.make()  # a restart while the MQTT path is down...
    supervisor = Supervisor(give_up=lambda why: None)
    p.path.start(supervisor)
    try:
        p.path.mqtt_path(True)  # ...owes the centre the restore
    finally:
        p.path.stop()
    assert p.queued() == [("path_restore", 1, "School 42")]
