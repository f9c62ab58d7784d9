"""The alarm path in the running agent: a button's event, or the box's own fault, to the outbox.

An alarm is one commit (agent/delivery/outbox.py: its seq, its row, and its DC-09 row when that
path wants it), then one byte on each path's wake pipe. Nothing before the commit waits on the
network, the video or the indicator; they all come after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.box.dc09 import Dc09Path
from agent.box.walktest import WalkTest
from agent.clock import clock_synced, rfc3339
from agent.config.model import ButtonConfig, Config
from agent.delivery.outbox import Companion, Outbox
from agent.delivery.protocol import Alarm, AlarmKind, Topics, new_event_id
from agent.hardware.buttons import ButtonEvent
from agent.hardware.indicators import Indicators
from agent.tracing import Point, Tracer
from agent.video.pipeline import Video

log = logging.getLogger("agent.daemon")


class AlarmWriter:
    """Commits alarms; ``wake`` is the uplink's. The box's own alarms may come from any
    thread (the outbox serialises them with the buttons')."""

    def __init__(self, cfg: Config, topics: Topics, outbox: Outbox, wake: Callable[[], None]):
        self._cfg = cfg
        self._topics = topics
        self._outbox = outbox
        self._wake = wake

    def commit(
        self,
        event_id: str,
        kind: AlarmKind,
        at: float,
        *,
        button: ButtonConfig | None = None,
        detail: str = "",
        test: bool = False,
        also: Companion | None = None,
    ) -> tuple[int, bool]:
        """Store the alarm (a button's, or without one the box's own) with the seq the outbox
        gives it, and ``also`` in the same transaction: (seq, durable). Wakes nothing."""
        site = self._cfg.site
        button_id, location = (button.id, button.location) if button else ("", site.name)
        synced = clock_synced()

        def build(seq: int) -> bytes:
            return Alarm(
                event_id=event_id,
                seq=seq,
                site_id=site.id,
                button_id=button_id,
                location=location,
                kind=str(kind),
                pressed_at=rfc3339(at),
                clock_synced=synced,
                detail=detail,
                test=test,
            ).to_json()

        return self._outbox.add_alarm(self._topics.alarm, event_id, build, also=also)

    def box_alarm(self, kind: AlarmKind, detail: str) -> None:
        """An alarm about the box itself (any thread), logged by the caller."""
        self.commit(new_event_id(), kind, time.time(), detail=detail)
        self._wake()

    def fault(self, detail: str) -> None:
        """A fault of the box itself (not of a button), on the alarm topic like the others."""
        self.box_alarm(AlarmKind.FAULT, detail)
        log.error("FAULT: %s", detail)


class ButtonAlarms:
    """The buttons thread's handler: each event to its alarm and DC-09 event; ``wake`` is the
    uplink's. ``last_alarm`` is for status."""

    def __init__(
        self,
        cfg: Config,
        writer: AlarmWriter,
        wake: Callable[[], None],
        *,
        walk_test: WalkTest,
        dc09: Dc09Path | None,
        indicators: Indicators,
        video: Video,
        tracer: Tracer,
    ) -> None:
        self._cfg = cfg
        self._writer = writer
        self._wake = wake
        self._walk_test = walk_test
        self._dc09 = dc09
        self._indicators = indicators
        self._video = video
        self._trace = tracer  # the benches' points on the alarm path (agent/tracing.py)
        self.last_alarm: dict[str, Any] | None = None

    def on_event(self, event: ButtonEvent) -> dict[str, Any] | None:
        self._trace(Point.EDGE, event.button_id)
        button = self._cfg.button(event.button_id)
        test = self._walk_test.active()
        path = self._dc09
        dc09 = path.for_button(button, event.change, test) if path else None
        if event.kind is None:  # a release: no alarm on MQTT, a restore on DC-09 if wanted
            if path is not None and dc09 is not None:
                path.add(dc09, event.wall_time)
            return None
        event_id = new_event_id()
        also = path.row(dc09, event.wall_time, event_id) if path and dc09 else None
        seq, durable = self._writer.commit(
            event_id,
            event.kind,
            event.wall_time,
            button=button,
            detail=event.detail,
            test=test,
            also=also,
        )
        self._trace(Point.COMMITTED, event_id)
        self._wake()
        if path is not None and also is not None:
            path.wake()
        if event.kind is AlarmKind.PANIC:
            self._indicators.alarm(event_id)
            self._video.record_alarm(event_id, event.wall_time, button.id)  # after the commit
        self.last_alarm = {
            "event_id": event_id,
            "seq": seq,
            "button_id": button.id,
            "kind": str(event.kind),
            "at": rfc3339(event.wall_time),
            "durable": durable,
        }
        log.warning(
            "%s: button=%s location=%r seq=%d event_id=%s%s%s",
            str(event.kind).upper(),
            button.id,
            button.location,
            seq,
            event_id,
            f" detail={event.detail!r}" if event.detail else "",
            f" dc09={dc09.kind}/{dc09.zone:03d}" if dc09 else "",
        )
        self._trace(Point.HANDLED, event_id)
        return self.last_alarm
