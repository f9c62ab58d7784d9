"""The dc09 settings: every problem listed with its key; the key file as a technician writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.delivery.dc09.events import EventKind
from agent.delivery.dc09.settings import (
    KeyFileError,
    Receiver,
    Settings,
    SettingsError,
    Transport,
    load_key,
)

GOOD = Receiver("10.0.0.5", 5000, Transport.TCP, "1234")


def test_defaults_are_valid() -> None:
    s = Settings((GOOD,))
    assert s.supervision_s == 60
    assert s.events == frozenset(EventKind) - {EventKind.PANIC_RESTORE, EventKind.HOLDUP_RESTORE}
    assert GOOD.name == "tcp://10.0.0.5:5000"


def test_every_problem_is_listed_with_its_key() -> None:
    with pytest.raises(SettingsError) as err:
        Settings(
            (GOOD, Receiver("", 70000, Transport.UDP, "12g4", "1234567", "", b"x" * 10)),
            events=frozenset(),
            supervision_s=5,
            attempts=0,
            test_report_s=1,
        )
    assert [str(p) for p in err.value.problems] == [
        "dc09.receivers[1].host: empty; give the receiver's host name or address",
        "dc09.receivers[1].port: 70000 is not a port (1-65535)",
        "dc09.receivers[1].account: '12g4' must be 3-16 hex digits, uppercase, as the centre "
        "assigned it",
        "dc09.receivers[1].receiver: '1234567' must be 1-6 hex digits, uppercase, as the centre "
        "assigned it",
        "dc09.receivers[1].line: '' must be 1-6 hex digits, uppercase, as the centre assigned it",
        "dc09.receivers[1].key: 80-bit; AES takes 128, 192 or 256 bits",
        "dc09.events: empty; leave the key out to send every event",
        "dc09.supervision_s: 5 is outside 10-86400",
        "dc09.attempts: 0 is outside 1-10",
        "dc09.test_report_s: 1 is shorter than supervision_s (5); the NULL poll already checks "
        "the path that often",
    ]


def test_no_receiver() -> None:
    with pytest.raises(SettingsError, match=r"dc09\.receivers: none"):
        Settings(())


def test_key_is_never_in_a_repr() -> None:
    assert "key" not in repr(Receiver("h", 1, Transport.TCP, "1234", key=bytes(16)))


@pytest.mark.parametrize("size", [16, 24, 32])
def test_load_key(tmp_path: Path, size: int) -> None:
    path = tmp_path / "dc09.key"
    digits = bytes(range(size)).hex()
    path.write_text(digits[:size].upper() + "\n" + digits[size:])  # either case, split lines
    path.chmod(0o640)
    assert load_key(path) == bytes(range(size))


def test_load_key_refuses(tmp_path: Path) -> None:
    path = tmp_path / "dc09.key"
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key(path)
    path.write_text("00" * 20)
    with pytest.raises(KeyFileError, match=r"32, 48 or 64 hex digits.*40 characters"):
        load_key(path)
    path.write_text("zz" * 16)
    with pytest.raises(KeyFileError, match="not all hex"):
        load_key(path)
    path.write_text("0" * 31)
    with pytest.raises(KeyFileError, match="31 characters"):
        load_key(path)
