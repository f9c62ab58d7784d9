"""Log lines cannot be forged and never carry a secret, whatever text reaches them."""

from __future__ import annotations

import io
import logging
import unicodedata
from collections.abc import Iterator

import pytest

from agent import logs
from agent.logs import UNSAFE_CHARS, escape, redact


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The agent's logging set up as under systemd, writing into a buffer."""
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    logs.setup("info")
    yield stream
    logging.getLogger().handlers[:] = []


def test_every_control_and_invisible_character_is_escaped() -> None:
    unsafe = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    missing = [
        hex(c)
        for c in range(0x110000)
        if unicodedata.category(chr(c)) in unsafe and not UNSAFE_CHARS.fullmatch(chr(c))
    ]
    assert missing == []
    assert escape("a\x00<2>b\x1b[31m\u2028\u202e\x85") == "a\\x00<2>b\\x1b[31m\\u2028\\u202e\\x85"
    assert escape("Главный вход, 1 этаж") == "Главный вход, 1 этаж"  # Cyrillic stays readable


def test_a_forged_record_stays_inside_one_escaped_line(journal: io.StringIO) -> None:
    forged = "x\x00<2>ALARM site=school-043\n<2>ALARM site=school-044\x1b]0;pwned\x07\u2028"
    logging.getLogger("agent.central").warning("refused a message from %s", forged)
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        logging.getLogger("agent.central").exception("failed")
    lines = journal.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3  # two events, two lines
    assert lines[0].startswith("<4>agent.central: refused a message from x\\x00<2>ALARM")
    assert lines[1].startswith("<3>agent.central: failed | Traceback")
    assert not any(UNSAFE_CHARS.search(line) for line in lines)


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("rtsp://user:pass@10.0.0.5/stream1", "rtsp://user:***@10.0.0.5/stream1"),
        ("at rtsp://admin:p@ss/w0rd@cam:554/s now", "at rtsp://admin:***@cam:554/s now"),
        ("'mqtts://centre:s3cr%40t@broker:8884'", "'mqtts://centre:***@broker:8884'"),
        ("https://ghp_T0KEN@github.com/x", "https://***@github.com/x"),
        ("rtsp://cam/s?user=a&password=x1&pwd=y#f", "rtsp://cam/s?user=a&password=***&pwd=***#f"),
        ("http://h/x?token=abc;sig=def", "http://h/x?token=***;sig=***"),
        ("two: rtsp://a:1@h1/ and http://b:2@h2/", "two: rtsp://a:***@h1/ and http://b:***@h2/"),
        ("rtsp://10.0.0.5:554/stream1", "rtsp://10.0.0.5:554/stream1"),
        ("mail admin@example.org", "mail admin@example.org"),
    ],
)
def test_redact_hides_every_url_credential_form(text: str, redacted: str) -> None:
    assert redact(text) == redacted


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "attack",
    [
        "a" * 1_000_000,  # the stall: quadratic before (64 KB took 85 s)
        "a:" * 500_000,
        "a://" * 250_000,
        "://a:b" * 160_000 + "@",
        "?password=" * 100_000,
        "&" * 1_000_000,
    ],
)
def test_redact_is_linear_on_hostile_input(attack: str) -> None:
    """A megabyte of each pattern: linear work is milliseconds; the old regex took hours."""
    redact(attack)
    logs._Formatter(journald=True).format(
        logging.LogRecord("agent", logging.WARNING, __file__, 1, "%s", (attack,), None)
    )
