"""What keeps one site's flood from reaching another site: the fair queue, the per-site budget
and reports that cannot become a flood of their own."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.centre.intake import Budget, FairQueue, Limits, MiB, Reporter
from agent.centre.ledger import Ledger


def test_a_site_with_one_item_waits_for_one_item_of_each_busy_site() -> None:
    queue: FairQueue[str] = FairQueue(1000, 10**9, 10**6, 10**9)
    for i in range(500):
        assert queue.put("hostile", f"flood {i}")
    queue.put("honest", "alarm")
    order = [queue.get(0) for _ in range(3)]
    assert order == [("hostile", "flood 0"), ("honest", "alarm"), ("hostile", "flood 1")]


def test_caps_refuse_the_sender_only() -> None:
    queue: FairQueue[int] = FairQueue(site_items=3, site_bytes=100, total_items=5, total_bytes=1000)
    assert all(queue.put("a", i, 10) for i in range(3))
    assert not queue.put("a", 3, 10)  # a's share of items
    assert queue.put("b", 0, 90) and not queue.put("b", 1, 20)  # b's share of bytes
    assert queue.put("c", 0) and not queue.put("d", 0)  # the total
    assert queue.get(0) == ("a", 0)
    assert queue.put("d", 0)  # room again
    assert len(queue) == 5
    assert queue.get(0) is not None


def test_get_times_out_empty() -> None:
    assert FairQueue[int](1, 1, 1, 1).get(0.01) is None


def test_budget_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    budget = Budget(per_s=1.0, burst=3, clock=lambda: now[0])
    assert [budget.take("a") for _ in range(4)] == [True, True, True, False]
    assert budget.take("b")  # another site has its own
    now[0] = 1.0
    assert budget.take("a") and not budget.take("a")
    assert not budget.take("b", 4) and budget.take("b", 3)  # n units at once, at most the burst


def test_reports_are_held_back_per_site_and_kind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    ledger = Ledger.open(tmp_path)
    reporter = Reporter(ledger, every_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    for _ in range(1000):
        reporter.report("hostile", "refused", "alarm: bad_field: seq")
    reporter.report("honest", "refused", "alarm: not_json")
    now[0] = 111.0
    reporter.report("hostile", "refused", "alarm: bad_field: seq")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[2].endswith("(999 more like it in the last 11 s)")
    assert [r.site_id for r in ledger.reports()] == ["hostile", "honest", "hostile"]


def test_limits_for_a_memory_size() -> None:
    limits = Limits.for_memory(64, site_quota_bytes=5)
    assert limits.assembly_bytes + limits.video_queue_bytes == 64 * MiB
    assert limits.assembly_site_bytes == 12 * MiB and limits.site_quota_bytes == 5
