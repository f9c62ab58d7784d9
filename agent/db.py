"""What every SQLite file of the agent shares: how a corrupt one is put aside.

The outbox, the command replay cache and the segment index each prefer losing a corrupt file to
not starting at all (an agent that cannot start loses every future alarm), so each moves the
file aside, with its WAL and shared-memory files, for forensics, and starts clean.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def move_aside(path: Path) -> Path:
    """Rename ``path`` and its -wal/-shm to ``*.corrupt-<time>``; returns the new name."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S.%f")  # two in one second keep both
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{aside}{suffix}"))
    return aside
