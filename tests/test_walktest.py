"""The walk test ends on the monotonic clock: a wall clock stepped back (unauthenticated NTP,
no RTC) must never keep it on and send real alarms as tests (issue 10, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.box.walktest import MAX_MINUTES, WalkTest


class Clocks:
    def __init__(self) -> None:
        self.mono, self.wall = 1000.0, 1_800_000_000.0

    def walk(self, storage: Path, boot: str = "boot-1") -> WalkTest:
        return WalkTest(storage, clock=lambda: self.mono, wall=lambda: self.wall, boot=lambda: boot)


def test_a_wall_clock_stepped_back_does_not_keep_it_on(tmp_path: Path) -> None:
    c = Clocks()
    walk = c.walk(tmp_path)
    walk.start(30)
    assert walk.active() and walk.until_wall() == c.wall + 1800
    c.wall -= 86400  # NTP steps the wall clock back a day
    c.mono += 1799
    assert walk.active()
    c.mono += 1
    assert walk.expired() and not walk.active()


def test_a_wall_clock_stepped_forward_does_not_end_it_early(tmp_path: Path) -> None:
    c = Clocks()
    walk = c.walk(tmp_path)
    walk.start(10)
    c.wall += 86400
    c.mono += 60
    assert walk.active() and not walk.expired()


def test_it_survives_a_restart_of_the_agent_but_not_a_reboot(tmp_path: Path) -> None:
    c = Clocks()
    c.walk(tmp_path).start(5)
    c.mono += 120
    again = c.walk(tmp_path)
    again.load()
    assert again.active() and again.until_wall() == c.wall + 180
    rebooted = c.walk(tmp_path, boot="boot-2")
    rebooted.load()
    assert not rebooted.active()  # a real alarm rather than a test nobody is watching


@pytest.mark.parametrize(
    "text",
    ['{"until": 99999999999}', "not json", '{"until_monotonic": 1e12, "boot_id": "boot-1"}', "[]"],
)
def test_an_old_or_absurd_file_does_not_turn_it_on(tmp_path: Path, text: str) -> None:
    (tmp_path / "test-mode.json").write_text(text)
    walk = Clocks().walk(tmp_path)
    walk.load()
    assert not walk.active()


def test_the_duration_is_bounded_and_off_removes_the_file(tmp_path: Path) -> None:
    walk = Clocks().walk(tmp_path)
    with pytest.raises(ValueError, match=f"1 to {MAX_MINUTES} minutes"):
        walk.start(MAX_MINUTES + 1)
    walk.start(MAX_MINUTES)
    assert (tmp_path / "test-mode.json").exists()
    walk.stop()
    assert not walk.active() and not (tmp_path / "test-mode.json").exists()
