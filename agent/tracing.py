"""Named points on the alarm's way through the box and the centre, for the benches.

The benches time each hop of an alarm, an acknowledgement and a live segment
(docs/benchmarks.md). They used to wrap private methods of the running objects, which broke
whenever one was renamed, and could time only what happened to be a method. These points are
part of the code instead, each on a seam that stays put when the code behind it changes; the
default tracer does nothing, so an agent that nobody measures pays one empty call per point.

A tracer is called on whichever thread crosses the point, so it must be quick and thread-safe;
``key`` names the message where the code at the point knows it (an event id, a segment's
sha256), else it is empty.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class Point(enum.StrEnum):
    # the box, the alarm (thread)
    EDGE = "edge"  # buttons: a button's event is being handled; key: the button id
    COMMITTED = "committed"  # buttons: the alarm is in the outbox, fsynced; key: event id
    HANDLED = "handled"  # buttons: done with it (indicator, clip, log line); key: event id
    WOKE = "woke"  # uplink: its wake pipe was read (another thread added work)
    PUBLISHED = "published"  # uplink: an alarm's PUBLISH handed to paho; key: event id
    ACKED = "acked"  # uplink: the broker's PUBACK for an alarm, recorded
    RECEIPT = "receipt"  # uplink: a receipt from the centre, applied (alarms deleted)
    # the box, commands and live video
    COMMAND = "command"  # uplink: a message on the command topic reached the daemon
    APPLIED = "applied"  # uplink: that command verified and carried out; key: command id
    LIVE_SEGMENT = "live_segment"  # camera: a live segment reached the daemon; key: sha256
    LIVE_POSTED = "live_posted"  # camera: its chunks are posted to the uplink; key: sha256
    # the centre's receiver
    CENTRE_ALARM = "centre_alarm"  # link-alarms: an alarm message arrived, before any check
    CENTRE_CHUNK = "centre_chunk"  # link-video: a video chunk arrived and parsed; key: sha256
    CENTRE_LIVE = "centre_live"  # video: a live segment appended to its file; key: sha256


Tracer = Callable[[Point, str], None]


def no_trace(point: Point, key: str) -> None:
    """The default: nobody is measuring."""
