"""Logging for journald and for a terminal: one line per event, never a secret.

Under systemd (JOURNAL_STREAM set) each line starts with the sd-daemon priority prefix
(``<3>`` …) so journald records the right priority, and without a timestamp (journald adds
its own). In a terminal, a short timestamped line.
"""

from __future__ import annotations

import logging
import os
import re
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}

# user:password@ in any URL: camera and broker credentials must never reach a log line.
_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)


def redact(text: str) -> str:
    return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


class _Formatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        fmt = "%(name)s: %(message)s"
        if not journald:
            fmt = "%(asctime)s %(levelname)-7s " + fmt
        super().__init__(fmt, datefmt="%H:%M:%S")
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record)).replace("\n", " | ")  # one event, one line
        if self._journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journald="JOURNAL_STREAM" in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("gpiozero").setLevel(logging.WARNING)
