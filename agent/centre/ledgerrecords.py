"""The ledger's records and what a stored alarm means, the same on SQLite (agent/centre/ledger.py)
and PostgreSQL (agent/centre/pgledger.py), so the two back ends cannot drift apart.

An alarm is stored once per (site, event); a second copy is only compared with the first. A box
numbers its alarms 1, 2, 3 ... across restarts, so a jump in a site's ``seq`` is an alarm that
has not arrived (yet: a resend may fill it, and then the gap closes); at most MAX_GAP_ROWS seqs
of a gap are listed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from agent.clock import rfc3339
from agent.delivery.protocol import Alarm

log = logging.getLogger("agent.ledger")

MAX_GAP_ROWS = 1000  # a box whose outbox was reset jumps; do not list a million "missing" seqs
REPORTS_PER_SITE = 200  # the newest reports of each site are kept; a hostile box cannot fill it

Row = tuple[Any, ...]
Statement = tuple[str, Row]  # SQL with ``?`` parameters, and its parameters


@dataclass(frozen=True, slots=True)
class Stored:
    """What storing an alarm found: a new one, or a copy of one stored before; and what a new
    one says of its site's seq."""

    new: bool
    gap_opened: tuple[int, int] | None = None  # first and last missing seq
    gap_closed: bool = False
    differs: bool = False  # a duplicate whose content is not the stored one's

    @classmethod
    def duplicate(cls, first: str | None, text: str) -> Stored:
        """An alarm stored before, with the payload ``first``: the first copy is kept, and a
        different second one is told."""
        return cls(new=False, differs=first != text)

    @classmethod
    def new_alarm(cls, alarm: Alarm, top: int | None, closed: bool) -> Stored:
        """A newly stored alarm. ``top``: the highest seq among its site's other alarms (None:
        it is the first); ``closed``: it filled a gap of the site."""
        if top is None or alarm.seq <= top + 1:
            if top is not None and alarm.seq <= top and not closed:
                log.warning(
                    "site %s: seq %d after %d: was the box's outbox reset?",
                    alarm.site_id,
                    alarm.seq,
                    top,
                )
            return cls(new=True, gap_closed=closed)
        return cls(new=True, gap_opened=(top + 1, alarm.seq - 1), gap_closed=closed)

    def missing(self) -> range:
        """The seqs listed for the gap this alarm opened: its newest MAX_GAP_ROWS at most (none
        if it opened none)."""
        if self.gap_opened is None:
            return range(0)
        first, last = self.gap_opened
        return range(max(first, last - MAX_GAP_ROWS + 1), last + 1)


@dataclass(frozen=True, slots=True)
class ClipRecord:
    path: str
    sha256: str
    manifest: tuple[str, ...]  # each segment's sha256, in order ("" for a version 1 row)
    problem: str


@dataclass(frozen=True, slots=True)
class Report:
    site_id: str
    at: str
    what: str
    detail: str


@dataclass(frozen=True, slots=True)
class LinkState:
    receiver: str
    link: str
    up: bool
    since: str
    lost_at: str | None
    regained_at: str | None
    outages: int
    last_error: str


def stamp(now: float | None) -> str:
    """The time a row records: ``now``, or the wall clock."""
    return rfc3339(time.time() if now is None else now)


def alarm_row(alarm: Alarm, text: str, test: bool, received: str) -> Row:
    """An alarm's row, in the alarms table's column order: the centre's ``test`` decision
    beside the box's own flag, and the payload exactly as the box sent it."""
    return (
        alarm.site_id,
        alarm.event_id,
        alarm.seq,
        alarm.button_id,
        alarm.kind,
        int(test),
        int(alarm.test),
        alarm.pressed_at,
        received,
        text,
    )
