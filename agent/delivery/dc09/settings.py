"""The ``dc09:`` settings as frozen values, checked when they are made.

Rules (phase 2 wires these into the config validator, each problem with its key and line):

- ``receivers``: one or more, tried in order (the first is the primary, the rest backups).
  Each has ``host`` (not empty), ``port`` 1-65535, ``transport`` tcp or udp, ``account``
  3-16 hex digits, ``receiver`` (DC-09 receiver number) and ``line`` (account prefix) 1-6 hex
  digits each (default 0), and an optional AES key: 16, 24 or 32 bytes, read by
  :func:`load_key` from a file holding 32, 48 or 64 hex digits (like the agent's other
  secrets, a file that others may read is refused). Hex is written in uppercase on the wire.
- ``format``: SIA-DCS or ADM-CID.
- ``events``: which events take this path (at least one); the default is every event but
  ``panic_restore`` and ``holdup_restore``: a restore on release is sent only where configured.
- ``supervision_s``: a NULL poll when nothing has been acknowledged for this long, 10-86400 s.
  EN 50136-1 reporting times follow from it (docs/dc09.md).
- ``test_report_s``: a periodic test report (RP / 602) this often, or None for none;
  at least ``supervision_s`` when set.
- ``ack_timeout_s`` 0.1-60 s: how long to wait for an answer to one attempt;
  ``attempts`` 1-10: attempts on one receiver before the next one is tried;
  ``retry_max_s`` 0.1-300 s: the longest pause after every receiver has failed (the pause
  doubles from ``ack_timeout_s`` up to it, with jitter).
"""

from __future__ import annotations

import enum
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent.delivery.dc09.events import EventKind, MessageFormat
from agent.delivery.dc09.frame import KEY_SIZES
from agent.errors import AgentError


class SettingsError(AgentError, ValueError):
    """Invalid DC-09 settings; ``problems`` lists each as ``key: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


DEFAULT_EVENTS = frozenset(EventKind) - {EventKind.PANIC_RESTORE, EventKind.HOLDUP_RESTORE}


class Transport(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class Receiver:
    host: str
    port: int
    transport: Transport
    account: str
    receiver: str = "0"
    line: str = "0"
    key: bytes | None = field(default=None, repr=False)  # never in a log line

    @property
    def name(self) -> str:
        """How logs and status name it: ``tcp://host:port``."""
        return f"{self.transport}://{self.host}:{self.port}"

    def problems(self, key: str) -> list[str]:
        out = []
        if not self.host:
            out.append(f"{key}.host: empty; give the receiver's host name or address")
        if not 1 <= self.port <= 65535:
            out.append(f"{key}.port: {self.port} is not a port (1-65535)")
        for name, value, lo, hi in (("account", self.account, 3, 16),
                                    ("receiver", self.receiver, 1, 6),
                                    ("line", self.line, 1, 6)):
            if not re.fullmatch(f"[0-9A-F]{{{lo},{hi}}}", value):
                out.append(f"{key}.{name}: {value!r} must be {lo}-{hi} hex digits, uppercase, "
                           "as the centre assigned it")
        if self.key is not None and len(self.key) not in KEY_SIZES:
            out.append(f"{key}.key: {len(self.key) * 8}-bit; AES takes 128, 192 or 256 bits")
        return out


@dataclass(frozen=True, slots=True)
class Settings:
    receivers: tuple[Receiver, ...]
    format: MessageFormat = MessageFormat.SIA_DCS
    events: frozenset[EventKind] = DEFAULT_EVENTS
    supervision_s: float = 60.0  # with 3 x 5 s attempts: path failure known within 75 s
    test_report_s: float | None = 86400.0
    ack_timeout_s: float = 5.0
    attempts: int = 3
    retry_max_s: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if not self.receivers:
            problems.append("dc09.receivers: none; give at least the primary receiver")
        for i, r in enumerate(self.receivers):
            problems += r.problems(f"dc09.receivers[{i}]")
        if not self.events:
            problems.append("dc09.events: empty; leave the key out to send every event")
        for name, value, lo, hi in (("supervision_s", self.supervision_s, 10, 86400),
                                    ("ack_timeout_s", self.ack_timeout_s, 0.1, 60),
                                    ("attempts", self.attempts, 1, 10),
                                    ("retry_max_s", self.retry_max_s, 0.1, 300)):
            if not lo <= value <= hi:
                problems.append(f"dc09.{name}: {value} is outside {lo}-{hi}")
        if self.test_report_s is not None and self.test_report_s < self.supervision_s:
            problems.append(f"dc09.test_report_s: {self.test_report_s} is shorter than "
                            f"supervision_s ({self.supervision_s}); the NULL poll already "
                            "checks the path that often")
        if problems:
            raise SettingsError(problems)


def load_key(path: Path) -> bytes:
    """An AES key from a file of 32, 48 or 64 hex digits (whitespace ignored).

    Refused if others may read it: the key is what stops a forged alarm or a forged ACK.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError([f"{path}: cannot read the DC-09 key: {exc}"]) from exc
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise SettingsError([f"{path}: others may read the DC-09 key; "
                             f"run: chmod 640 {path}"])
    digits = "".join(text.split())
    if not re.fullmatch(r"[0-9A-Fa-f]*", digits) or len(digits) // 2 not in KEY_SIZES \
            or len(digits) % 2:
        raise SettingsError([f"{path}: a DC-09 key is 32, 48 or 64 hex digits (AES-128/192/256)"
                             f"; this file has {len(digits)} characters"
                             f"{'' if re.fullmatch(r'[0-9A-Fa-f]*', digits) else ', not all hex'}"])
    return bytes.fromhex(digits)
