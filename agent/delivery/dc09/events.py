"""What each event of the box becomes on DC-09: one table, in SIA-DCS and in ADM-CID.

The table (docs/dc09.md shows it with the reasons; the tests send every row to pysiaalarm):

=================  =======  ==========  ==============================================
event              SIA-DCS  Contact ID  meaning at the centre
=================  =======  ==========  ==============================================
panic              PA       E120        panic alarm (a press)
panic_restore      PH       R120        the button released (only if configured)
holdup             HA       E122        silent hold-up / duress (a button marked so)
holdup_restore     HH       R122        that button released
tamper             TA       E144        a normally-closed loop cut: sensor tamper
tamper_restore     TR       R144        the loop closed again
stuck              PT       E375        panic zone trouble: held far longer than a press
stuck_restore      PJ       R375        the stuck button released
cable_fault        UT       E380        sensor (cable) trouble on the button's zone
cable_restore      UJ       R380        the cable fault cleared
test_start         TS       E607        walk test begins: do not dispatch
test_end           TE       R607        walk test ends
walk_test          TP       E615        a press during a walk test: panic zone tested
periodic_test      RP       E602        periodic (automatic) test report
path_fail          YC       E350        the MQTT path to the centre has failed
path_restore       YK       R350        the MQTT path is back
=================  =======  ==========  ==============================================

The zone is the button's number (1-999); 0 for the box itself (test reports, test mode); the
path's number for path events (1 = MQTT). The area (SIA ``ri``, Contact ID partition) is 1: a
school is one area. The button's location goes in extended data ``[L...]`` in both formats,
transliterated (translit.py); it is the only extended-data block, which keeps ADM-CID frames
readable by pysiaalarm (it takes one block after ADM-CID data, see docs/dc09.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.delivery.dc09.translit import location_text
from agent.errors import AgentError

AREA = 1
BOX_ZONE = 0  # the box itself: test reports, test mode
MAX_ZONE = 999  # Contact ID has three digits; a button's number is 1 to this
MQTT_PATH = 1  # the zone of path_fail / path_restore for the MQTT path


class EventError(AgentError, ValueError):
    """An event that cannot be put into a DC-09 message."""


class MessageFormat(enum.StrEnum):
    SIA_DCS = "SIA-DCS"  # SIA DC-03 event codes: two letters, then the zone
    ADM_CID = "ADM-CID"  # Ademco Contact ID (SIA DC-05): qualifier, 3 digits, area, zone


class EventKind(enum.StrEnum):
    PANIC = "panic"
    PANIC_RESTORE = "panic_restore"
    HOLDUP = "holdup"
    HOLDUP_RESTORE = "holdup_restore"
    TAMPER = "tamper"
    TAMPER_RESTORE = "tamper_restore"
    STUCK = "stuck"
    STUCK_RESTORE = "stuck_restore"
    CABLE_FAULT = "cable_fault"
    CABLE_RESTORE = "cable_restore"
    TEST_START = "test_start"
    TEST_END = "test_end"
    WALK_TEST = "walk_test"
    PERIODIC_TEST = "periodic_test"
    PATH_FAIL = "path_fail"
    PATH_RESTORE = "path_restore"


@dataclass(frozen=True, slots=True)
class Code:
    sia: str  # SIA DC-03 event code
    qualifier: int  # Contact ID: 1 new event, 3 restore
    cid: int  # Contact ID event code


MAPPING: dict[EventKind, Code] = {
    EventKind.PANIC: Code("PA", 1, 120),
    EventKind.PANIC_RESTORE: Code("PH", 3, 120),
    EventKind.HOLDUP: Code("HA", 1, 122),
    EventKind.HOLDUP_RESTORE: Code("HH", 3, 122),
    EventKind.TAMPER: Code("TA", 1, 144),
    EventKind.TAMPER_RESTORE: Code("TR", 3, 144),
    EventKind.STUCK: Code("PT", 1, 375),
    EventKind.STUCK_RESTORE: Code("PJ", 3, 375),
    EventKind.CABLE_FAULT: Code("UT", 1, 380),
    EventKind.CABLE_RESTORE: Code("UJ", 3, 380),
    EventKind.TEST_START: Code("TS", 1, 607),
    EventKind.TEST_END: Code("TE", 3, 607),
    EventKind.WALK_TEST: Code("TP", 1, 615),
    EventKind.PERIODIC_TEST: Code("RP", 1, 602),
    EventKind.PATH_FAIL: Code("YC", 1, 350),
    EventKind.PATH_RESTORE: Code("YK", 3, 350),
}


@dataclass(frozen=True, slots=True)
class Event:
    """One thing to tell the centre. ``location`` is the button's text as configured, in any
    script: it is transliterated when the message is made, never stored altered."""

    kind: EventKind
    zone: int
    location: str = ""

    def __post_init__(self) -> None:
        if not BOX_ZONE <= self.zone <= MAX_ZONE:
            raise EventError(
                f"DC-09 zone {self.zone}: Contact ID has three digits, {BOX_ZONE}-{MAX_ZONE}"
            )


@dataclass(frozen=True, slots=True)
class Message:
    """What goes into a frame: the id token, the data between ``[`` and ``]``, the blocks."""

    token: str
    data: str
    extended: tuple[str, ...] = ()


NULL = Message("NULL", "")  # the supervision poll


def encode(event: Event, fmt: MessageFormat, account: str) -> Message:
    code = MAPPING[event.kind]
    if fmt is MessageFormat.SIA_DCS:
        data = f"#{account}|Nri{AREA}/{code.sia}{event.zone:03d}"
    else:
        data = f"#{account}|{code.qualifier}{code.cid:03d} {AREA:02d} {event.zone:03d}"
    text = location_text(event.location)
    return Message(fmt.value, data, (f"L{text}",) if text else ())
