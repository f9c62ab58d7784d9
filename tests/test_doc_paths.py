"""Every source file the docs, the README and the code's own comments name exists: after the
modules moved into subpackages, thirty-odd references still pointed at the old flat files, and
a technician or a new maintainer following one found nothing."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

# a file of the tree, as the docs name it: agent/centre/ledger.py, bench/uplink.py, ...
PATH = re.compile(
    r"(?<![\w./-])((?:agent|bench|tests|tools|broker|systemd|hardware)/[\w./-]*\.[a-z]+)\b"
)
WHERE = [
    "README.md",
    "docs/*.md",
    "hardware/**/*.md",
    "agent/**/*.py",
    "bench/*.py",
    "tests/**/*.py",
]


def _mentions() -> list[tuple[str, str]]:
    found = []
    for pattern in WHERE:
        for file in sorted(REPO.glob(pattern)):
            if file.name == Path(__file__).name:
                continue
            for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                for path in PATH.findall(line):
                    found.append((f"{file.relative_to(REPO)}:{n}", path))
    return found


def test_every_named_file_exists() -> None:
    mentions = _mentions()
    missing = [f"{where}: {path}" for where, path in mentions if not (REPO / path).exists()]
    assert len(mentions) > 100  # the pattern finds what the docs name
    assert missing == [], "\n".join(missing)
