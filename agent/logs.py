"""Logging for journald and for a terminal: one line per event, never a secret, never forged.

Under systemd (JOURNAL_STREAM set) each line starts with the sd-daemon priority prefix
(``<3>`` …) so journald records the right priority, and without a timestamp (journald adds
its own). In a terminal, a short timestamped line.

Log lines carry text that came from outside: from boxes, which the centre must not trust
(docs/security.md, "A hostile box"), and from configs and cameras. So every line is

- **escaped**: no control or invisible character reaches the journal or a terminal raw. A NUL
  followed by ``<2>`` would start a new journald record with its own priority (a forged
  "ALARM"); ESC opens terminal escape sequences; U+2028 breaks line readers; bidi overrides
  reorder what the operator reads. They are written as ``\\x00``, ``\\u202e`` …; a newline
  (tracebacks) becomes `` | ``, so one event stays one line.
- **redacted** by :func:`redact`, the one redactor of the code base (config messages and camera
  names use it too). It runs in linear time: the previous regular expression backtracked
  quadratically on a long run of letters, and 64 KB of ``a`` in one field took 85 s.
"""

from __future__ import annotations

import logging
import os
import re
import sys

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

# Every character of Unicode's general categories Cc (C0, DEL, C1), Cf (format: bidi
# controls, zero-width characters, BOM, tags), Cs (lone surrogates), Zl and Zp (U+2028,
# U+2029). Written out rather than computed from unicodedata at import (a second on a Pi);
# tests/test_logs.py checks it covers every such character this Python knows.
UNSAFE_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every unsafe character (UNSAFE_CHARS) written as a visible escape."""
    return UNSAFE_CHARS.sub(_escape_one, text)


# A whitespace-free run: the most a URL can span in a log line.
_TOKEN = re.compile(r"\S+")
# A secret in a query string or a form-encoded body. Every match starts at one of [?&;] and
# nothing follows the greedy value, so the engine never backtracks.
_QUERY_SECRET = re.compile(
    r"([?&;](?:password|passwd|pass|pwd|secret|token|access_token|auth|key|api_key|apikey"
    r"|sig|signature)=)[^&#;\s]*",
    re.IGNORECASE,
)


def _redact_token(match: re.Match[str]) -> str:
    token = match.group()
    start = token.find("://")
    at = token.rfind("@")
    if start < 0 or at < start + 3:
        return token
    # The user information runs to the LAST '@' of the token: cameras accept unescaped '@' and
    # '/' in passwords, so a strange URL is over-redacted rather than leaked.
    user, colon, _password = token[start + 3 : at].partition(":")
    return token[: start + 3] + (f"{user}:***" if colon else "***") + token[at:]


def redact(text: str) -> str:
    """``text`` with URL credentials (``user:***@``; a bare ``token@`` becomes ``***@``) and
    password-like query parameters (``password=***``) replaced. Linear in ``len(text)``."""
    if "://" in text:
        text = _TOKEN.sub(_redact_token, text)
    if "=" in text:
        text = _QUERY_SECRET.sub(r"\g<1>***", text)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        fmt = "%(name)s: %(message)s"
        if not journald:
            fmt = "%(asctime)s %(levelname)-7s " + fmt
        super().__init__(fmt, datefmt="%H:%M:%S")
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = escape(redact(super().format(record)).replace("\n", " | "))  # one event, one line
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
