"""The wall clock on the wire: the one timestamp format, and whether the clock can be trusted.

Every time on the wire (alarms, statuses, clip chunks, commands, results, the centre's
presence) is ``2026-11-25T08:00:00.000Z``: RFC 3339, UTC, exactly three fraction digits and a
``Z``. One form means one parser that accepts nothing else, so a hostile peer cannot find a
spelling that two parsers read differently.

A Pi has no RTC: until NTP syncs, its wall clock may be days off, so whoever reads a time must
also know whether the box's clock was synchronised when it wrote it (:func:`clock_synced`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
from datetime import UTC, datetime

# [0-9], never \d: \d also matches other scripts' digits, which int() then accepts.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"\.([0-9]{3})Z"
)


def rfc3339(seconds: float) -> str:
    """Seconds since the epoch on the wire, truncated to the millisecond.

    Rounded to the microsecond first, as ``datetime`` does: a time parsed from the wire
    (``….123``) is a float a hair below its millisecond, and flooring it at once would write
    it back one millisecond early."""
    return rfc3339_ms(round(seconds * 1_000_000) // 1000)


def rfc3339_or_none(seconds: float | None) -> str | None:
    """For status fields that say "never" with null (a last ACK that has not come)."""
    return None if seconds is None else rfc3339(seconds)


def rfc3339_ms(ms: int) -> str:
    """Milliseconds since the epoch on the wire, exactly (a signed command's times are
    computed in whole milliseconds, with no float in between)."""
    whole = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{ms % 1000:03d}Z"


def parse_rfc3339(value: object) -> float | None:
    """Seconds since the epoch from the wire's one form, or None for anything else (another
    RFC 3339 spelling included, and impossible dates such as 31 February)."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, milli = (int(part) for part in match.groups())
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:  # month 13, 31 February, second 60
        return None
    return moment.timestamp() + milli / 1000


_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised


def clock_synced() -> bool:
    """True once the kernel says NTP (any daemon) has synchronised the clock.

    Until then the centre must not trust ``pressed_at``, and the box cannot judge a command's
    expiry. adjtimex() with modes=0 only reads, so it needs no privilege.
    """
    libc = _libc()
    if libc is None:
        return False
    buf = ctypes.create_string_buffer(1024)  # larger than struct timex on every ABI; modes=0
    return libc.adjtimex(buf) not in (-1, _TIME_ERROR)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None
