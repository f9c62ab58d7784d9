"""Which ledger the centre uses: SQLite in the store (one centre machine, the default) or
PostgreSQL (``--ledger postgresql://…``: several receivers and consoles on several machines).

Both are a :class:`~agent.centre.ledgerstore.LedgerStore`, what the receiver, its video path
and its reports need of either.
"""

from __future__ import annotations

from pathlib import Path

from agent.centre.ledger import Ledger
from agent.centre.ledgerstore import LedgerStore
from agent.errors import AgentError


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
