"""The one timestamp form on the wire: written and read back to the millisecond, nothing else
read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import parse_rfc3339, rfc3339, rfc3339_ms

MS = st.integers(0, 4_102_444_800_000)  # up to 2100


@given(MS)
def test_a_time_read_from_the_wire_is_written_back_unchanged(ms: int) -> None:
    text = rfc3339_ms(ms)
    seconds = parse_rfc3339(text)
    assert seconds is not None and rfc3339(seconds) == text


@given(st.floats(0, 4_102_444_800))
def test_seconds_are_written_as_datetime_writes_them(seconds: float) -> None:
    expected = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    assert rfc3339(seconds) == expected.replace("+00:00", "Z")


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-25T08:00:00Z",
        "2026-11-25T08:00:00.000+00:00",
        "2026-11-25 08:00:00.000Z",
        "2026-02-30T08:00:00.000Z",
        "2026-11-25T08:00:60.000Z",
        "٢٠٢٦-11-25T08:00:00.000Z",
        "2026-11-25T08:00:00.0000Z",
        1795000000,
        None,
    ],
)
def test_no_other_spelling_is_read(text: object) -> None:
    assert parse_rfc3339(text) is None
