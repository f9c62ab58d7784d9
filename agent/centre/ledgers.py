"""Which ledger the centre uses: SQLite in the store (one centre machine, the default) or
PostgreSQL (``--ledger postgresql://…``: several receivers and consoles on several machines).

:class:`LedgerStore` is what the receiver, its video path and its reports need of either;
agent/centre/ledger.py and agent/centre/pgledger.py both provide it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from agent.centre.ledger import ClipRecord, Ledger, LinkState, Report, Stored
from agent.delivery.protocol import Alarm
from agent.errors import AgentError


class LedgerStore(Protocol):
    def close(self) -> None: ...
    def add_alarm(
        self, alarm: Alarm, payload: bytes, test: bool, now: float | None = None
    ) -> Stored: ...
    def add_alarms(
        self, alarms: list[tuple[Alarm, bytes, bool]], now: float | None = None
    ) -> list[Stored]: ...
    def known_alarms(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]: ...
    def sites_of(self, event_id: str) -> list[str]: ...
    def received(self) -> dict[tuple[str, str], str]: ...
    def alarms(self, site_id: str | None = None) -> list[dict[str, Any]]: ...
    def site_status(
        self,
        site_id: str,
        state: str,
        status: str,
        test_until: str | None,
        now: float | None = None,
    ) -> bool: ...
    def test_windows(self, sites: list[str]) -> dict[str, str]: ...
    def sites(self) -> list[tuple[str, str, str]]: ...
    def gaps(self) -> dict[str, list[int]]: ...
    def add_clip(
        self,
        site_id: str,
        event_id: str,
        camera_id: str,
        path: Path,
        size: int,
        sha256: str,
        manifest: list[str],
        problem: str,
    ) -> bool: ...
    def clip(self, site_id: str, event_id: str, camera_id: str) -> ClipRecord | None: ...
    def clip_problem(self, site_id: str, event_id: str, camera_id: str) -> str | None: ...
    def report(self, site_id: str, what: str, detail: str, now: float | None = None) -> None: ...
    def reports(self, site_id: str | None = None, newest: int = 50) -> list[Report]: ...
    def link_changed(
        self,
        receiver: str,
        link: str,
        up: bool,
        error: str = "",
        now: float | None = None,
        outage: bool = True,
    ) -> None: ...
    def links(self) -> list[LinkState]: ...


def open_ledger(store: Path, url: str | None = None, *, recover: bool = False) -> LedgerStore:
    """The store's SQLite ledger, or the PostgreSQL one at ``url``; the store (alarms.jsonl,
    clips) is made either way."""
    store.mkdir(parents=True, exist_ok=True)
    if url is None:
        return Ledger.open(store, recover=recover)
    if not url.startswith(("postgresql://", "postgres://")):
        raise AgentError(f"--ledger must be a postgresql:// URL, not {url.split(':')[0]}:…")
    try:
        from agent.centre.pgledger import PgLedger
    except ImportError:
        raise AgentError("PostgreSQL needs psycopg: pip install 'edge-agent[centre]'") from None
    return PgLedger.open(url)
