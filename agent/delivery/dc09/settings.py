"""The ``dc09:`` settings as frozen values, checked when they are made.

Rules (the config validator, agent/config/schema.py, builds these values from the ``dc09:``
section and gives each problem the line of its key):

- ``receivers``: one or more, tried in order (the first is the primary, the rest backups).
  Each has ``host`` (not empty), ``port`` 1-65535, ``transport`` tcp or udp, ``account``
  3-16 hex digits, ``receiver`` (DC-09 receiver number) and ``line`` (account prefix) 1-6 hex
  digits each (default 0), and an optional AES key: 16, 24 or 32 bytes, read by
  :func:`load_key` from a file holding 32, 48 or 64 hex digits. Like the agent's other
  secrets, a key file that others may read is a warning (agent.config.config_warnings), not an
  error: a wrong file mode must not stop the alarms. Hex is written in uppercase on the wire.
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
from dataclasses import dataclass, field
from pathlib import Path

from agent.delivery.dc09.events import EventKind, MessageFormat
from agent.delivery.dc09.frame import KEY_SIZES
from agent.errors import AgentError


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the key path as the config file writes it (``dc09.receivers[1].account``),
    so the config validator can give it the line of that key, and what is wrong."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class SettingsError(AgentError, ValueError):
    """Invalid DC-09 settings; ``problems`` lists every one, each with its key."""

    def __init__(self, problems: list[Finding]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


class KeyFileError(AgentError, ValueError):
    """The AES key file cannot be read or does not hold a key."""


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

    def problems(self, key: str) -> list[Finding]:
        out = []
        if not self.host:
            out.append(Finding(f"{key}.host", "empty; give the receiver's host name or address"))
        if not 1 <= self.port <= 65535:
            out.append(Finding(f"{key}.port", f"{self.port} is not a port (1-65535)"))
        for name, value, lo, hi in (
            ("account", self.account, 3, 16),
            ("receiver", self.receiver, 1, 6),
            ("line", self.line, 1, 6),
        ):
            if not re.fullmatch(f"[0-9A-F]{{{lo},{hi}}}", value):
                out.append(
                    Finding(
                        f"{key}.{name}",
                        f"{value!r} must be {lo}-{hi} hex digits, "
                        "uppercase, as the centre assigned it",
                    )
                )
        if self.key is not None and len(self.key) not in KEY_SIZES:
            out.append(
                Finding(f"{key}.key", f"{len(self.key) * 8}-bit; AES takes 128, 192 or 256 bits")
            )
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
            problems.append(Finding("dc09.receivers", "none; give at least the primary receiver"))
        for i, r in enumerate(self.receivers):
            problems += r.problems(f"dc09.receivers[{i}]")
        if not self.events:
            problems.append(Finding("dc09.events", "empty; leave the key out to send every event"))
        for name, value, lo, hi in (
            ("supervision_s", self.supervision_s, 10, 86400),
            ("ack_timeout_s", self.ack_timeout_s, 0.1, 60),
            ("attempts", self.attempts, 1, 10),
            ("retry_max_s", self.retry_max_s, 0.1, 300),
        ):
            if not lo <= value <= hi:
                problems.append(Finding(f"dc09.{name}", f"{value:g} is outside {lo}-{hi}"))
        if self.test_report_s is not None and self.test_report_s < self.supervision_s:
            problems.append(
                Finding(
                    "dc09.test_report_s",
                    f"{self.test_report_s:g} is shorter "
                    f"than supervision_s ({self.supervision_s:g}); the NULL poll "
                    "already checks the path that often",
                )
            )
        if problems:
            raise SettingsError(problems)


def load_key(path: Path) -> bytes:
    """An AES key from a file of 32, 48 or 64 hex digits (whitespace ignored).

    The key is what stops a forged alarm or a forged ACK, so its file should be private; that
    is checked where the agent's other secrets are (agent.config.config_warnings), as a
    warning, because a wrong file mode must not stop the alarms.
    """
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the DC-09 key: {exc}") from exc
    digits = "".join(text.split())
    hex_only = re.fullmatch(r"[0-9A-Fa-f]*", digits) is not None
    if not hex_only or len(digits) % 2 or len(digits) // 2 not in KEY_SIZES:
        raise KeyFileError(
            f"{path}: a DC-09 key is 32, 48 or 64 hex digits (AES-128/192/256); "
            f"this file has {len(digits)} characters"
            f"{'' if hex_only else ', not all hex'}"
        )
    return bytes.fromhex(digits)
