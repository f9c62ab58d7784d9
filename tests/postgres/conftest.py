"""A real PostgreSQL (Debian's, a throwaway cluster per test session on a Unix socket), and a
fresh database for each test; skipped with the reason where it cannot be started."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from agent.testing.postgres import Postgres, available

_numbers = itertools.count()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Postgres]:
    why = available()
    if why:
        pytest.skip(why)
    pytest.importorskip("psycopg", reason="pip install '.[centre]' brings psycopg")
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def ledger_url(cluster: Postgres) -> str:
    return cluster.create(f"centre{next(_numbers)}")
