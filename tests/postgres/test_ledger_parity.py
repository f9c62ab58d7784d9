"""The PostgreSQL ledger stores a group of alarms in a few statements and walks the seq
bookkeeping itself; the SQLite ledger stores alarm by alarm. Every short history of a site
(repeats, a changed resend, gaps opened and filled, inside one group or across two) must come
out the same from both: the same answer for each alarm, the same gaps, the same rows."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from agent.centre.ledger import Ledger
from agent.centre.pgledger import PgLedger
from agent.delivery.protocol import Alarm

# (seq, variant): the event is its seq's; variant 1 is a resend of seq 2 with other content
STEPS = [(1, 0), (2, 0), (3, 0), (5, 0), (2, 1)]
SITES_PER_GROUP = 20  # a group holds several sites' alarms, interleaved as the fair queue does


def _alarm(site: str, seq: int, variant: int) -> tuple[Alarm, bytes, bool]:
    alarm = Alarm(
        f"ev-{seq}",
        seq,
        site,
        "b",
        "холл" if variant else "hall",
        "panic",
        "2026-11-25T08:00:00.000Z",
        True,
    )
    return alarm, alarm.to_json(), False


def _histories() -> list[list[tuple[int, int]]]:
    return [list(history) for n in range(1, 5) for history in itertools.product(STEPS, repeat=n)]


def _groups(split: int) -> list[list[tuple[Alarm, bytes, bool]]]:
    """Each history as one site; ``split`` alarms of it in a first group, the rest in a second
    (0: all in one); ``SITES_PER_GROUP`` sites per group, interleaved."""
    groups: list[list[tuple[Alarm, bytes, bool]]] = []
    histories = _histories()
    for start in range(0, len(histories), SITES_PER_GROUP):
        chunk = {
            f"h{split}-{start + i:04d}": history
            for i, history in enumerate(histories[start : start + SITES_PER_GROUP])
        }
        parts = [{s: h[:split] for s, h in chunk.items()}, {s: h[split:] for s, h in chunk.items()}]
        for part in parts:
            rows = itertools.zip_longest(
                *(
                    [_alarm(site, seq, variant) for seq, variant in history]
                    for site, history in part.items()
                )
            )
            group = [alarm for row in rows for alarm in row if alarm is not None]
            if group:
                groups.append(group)
    return groups


def test_a_group_is_stored_as_alarm_by_alarm_would_be(tmp_path: Path, ledger_url: str) -> None:
    sqlite, pg = Ledger.open(tmp_path), PgLedger.open(ledger_url)
    try:
        for split in (0, 1, 2):
            for group in _groups(split):
                expected = sqlite.add_alarms(group, now=0.0)
                got = pg.add_alarms(group, now=0.0)
                assert got == expected, [f"{a.site_id} seq {a.seq}" for a, _, _ in group]
        assert pg.gaps() == sqlite.gaps()
        stored = sorted(json.dumps(a, sort_keys=True) for a in pg.alarms())
        assert stored == sorted(json.dumps(a, sort_keys=True) for a in sqlite.alarms())
        assert len(stored) > 1000  # every history was stored
    finally:
        sqlite.close()
        pg.close()
