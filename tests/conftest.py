"""Shared fixtures, on the public harness (agent/testing): a real Mosquitto per test, a
subscriber that collects what the centre sees, the agent run as a separate process the way
systemd runs it or in this process, and the centre's real receiver."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.testing import wait_for
from agent.testing.broker import Mosquitto
from agent.testing.mqtt import MqttClient
from agent.testing.site import AgentProcess, Centre, InProcessAgent, school_config

__all__ = [
    "ALARMS",
    "REPO",
    "STATUS",
    "AgentProcess",
    "Centre",
    "InProcessAgent",
    "MqttClient",
    "alarms",
    "cli",
    "subscriber",
    "wait_alarms",
    "wait_for",
    "write_config",
]

REPO = Path(__file__).resolve().parent.parent
ALARMS, STATUS = "schools/+/alarm", "schools/+/status"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long soak variants")
    parser.addoption(
        "--fault-seeds",
        type=int,
        default=2,
        metavar="N",
        help="fresh random seeds per randomized fault test (default 2; tests/fault/conftest.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _agent_log_setup_undone() -> Iterator[None]:
    """``edge-agent`` run in-process (``agent.cli.main``, the demo) calls ``logs.setup()``, which
    points the root logger at the ``sys.stderr`` of that moment: pytest's capture, closed after
    the test, so later tests' log lines failed ("I/O operation on closed file"). Undone here."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:  # pytest's own handlers are subclasses
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.kill()


def subscriber(port: int, *topics: str, client_id: str) -> MqttClient:
    """Subscribes like the centre: a persistent session, so the broker queues while it is away
    (a broker restarted with its persistence keeps it), and a quick reconnect."""
    return MqttClient(port, topics, client_id=client_id, persistent=True, keepalive=5).connect()


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[MqttClient]:
    c = subscriber(broker.port, ALARMS, STATUS, client_id="test-collector")
    yield c
    c.close()


def alarms(client: MqttClient) -> list[dict[str, Any]]:
    return client.payloads(ALARMS)


def wait_alarms(client: MqttClient, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Until ``n`` alarms arrived; all of them."""
    return [m.json() for m in client.wait(ALARMS, n, timeout)]


class Refusing:
    """An outbox's connection on a failing card, put in place of ``Outbox._conn``: every
    transaction fails as SQLite fails on a disk I/O error; reads still work."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def __enter__(self) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    def __exit__(self, *a: object) -> None:
        pass

    def execute(self, *a: object) -> sqlite3.Cursor:
        return self.real.execute(*a)  # type: ignore[arg-type]


def write_config(path: Path, broker_port: int, storage: Path, **sections: Any) -> Path:
    """The simulated school, without cameras, pointed at a test broker and storage dir."""
    return school_config(path, port=broker_port, storage=storage, **sections)


@pytest.fixture
def agent_config(tmp_path: Path, broker: Mosquitto) -> Path:
    return write_config(tmp_path / "agent.yaml", broker.port, tmp_path / "state")


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """The commanding user's key folder (``edge-agent central keygen``), apart from the
    receiver's store (docs/security.md): ``centre.key`` and ``centre.pub``."""
    r = cli("central", "--key", str(tmp_path / "keys" / "centre.key"), "keygen")
    assert r.returncode == 0, r.stderr
    return tmp_path / "keys"


@pytest.fixture
def agent_process(agent_config: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(agent_config)
    yield a
    a.close()


@pytest.fixture
def in_process_agent(agent_config: Path) -> Iterator[InProcessAgent]:
    """The daemon in this process, started; its supervisor cannot end pytest (agent/testing)."""
    a = InProcessAgent(agent_config).start(online_s=None)
    yield a
    a.stop()


@pytest.fixture
def centre(broker: Mosquitto, tmp_path: Path) -> Iterator[Centre]:
    c = Centre(broker.url, tmp_path / "centre")
    yield c
    c.stop()
