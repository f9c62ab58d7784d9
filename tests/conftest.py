"""Shared fixtures: a real Mosquitto per test, a subscriber that collects what the centre sees,
and the agent run as a separate process the way systemd runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.centre.service import run_receiver
from agent.testing.broker import Mosquitto

REPO = Path(__file__).resolve().parent.parent
# How long AgentProcess.start() waits for the agent's control socket. A workstation needs about a
# second; a Pi 3, or a Pi userland under emulation (tools/release-check.sh: 13 s cold), far more.
START_TIMEOUT_S = float(os.environ.get("EDGE_AGENT_TEST_START_S", "30"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long soak variants")
    parser.addoption("--fault-seeds", type=int, default=2, metavar="N",
                     help="fresh random seeds per randomized fault test (default 2; "
                          "tests/fault/conftest.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.kill()


@dataclass
class Collector:
    """Subscribes like the centre: a persistent session, so the broker queues while it is away."""

    port: int
    topics: list[str]
    client_id: str = "test-collector"
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: mqtt.Client | None = None
    subscribed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Collector:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)

        def on_connect(cl: mqtt.Client, *_: Any) -> None:
            for t in self.topics:
                cl.subscribe(t, qos=1)

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

        c.on_connect = on_connect
        c.on_message = on_message
        c.on_subscribe = lambda *_: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.reconnect_delay_set(0.05, 0.2)
        c.connect_async("127.0.0.1", self.port, keepalive=5, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        wait_for(self.subscribed.is_set, 5, "the collector to subscribe")
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def payloads(self, suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix) and p]

    def alarms(self) -> list[dict[str, Any]]:
        return self.payloads("/alarm")

    def wait_alarms(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.alarms()) >= n, timeout, f"{n} alarms")
        return self.alarms()


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[Collector]:
    c = Collector(broker.port, ["schools/+/alarm", "schools/+/status"]).start()
    yield c
    c.stop()


def write_config(path: Path, broker_port: int, storage: Path, **overrides: Any) -> Path:
    """The simulated school's config, pointed at a test broker and a test storage dir."""
    from agent.config import default_config_text

    data = yaml.safe_load(default_config_text())
    data["mqtt"].update({"port": broker_port, "keepalive_s": 5})
    data["storage"]["path"] = str(storage)
    data["cameras"] = []
    for b in data["buttons"]:
        b.pop("cameras", None)
    for key, value in overrides.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


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


@dataclass
class AgentProcess:
    config: Path
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> AgentProcess:
        """Runs the agent; returns once its control socket answers (EDGE_AGENT_TEST_START_S).

        If it does not (the agent exited, or is too slow), the agent is killed before the error
        is raised, with its log in the message: a failed start never leaves an agent running.
        """
        self.log_path = self.config.with_suffix(".log")
        with open(self.log_path, "a") as log:
            proc = self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            what = "the agent's control socket (EDGE_AGENT_TEST_START_S)"
            wait_for(lambda: proc.poll() is not None or self.status() is not None, timeout, what)
            if proc.poll() is not None:
                raise AssertionError(f"the agent exited ({proc.returncode}) before it answered")
        except AssertionError as exc:
            self.close()
            raise AssertionError(f"{exc}; the agent's log:\n{self.output()[-4000:]}") from None
        except BaseException:
            self.close()
            raise
        return self

    def status(self) -> dict[str, Any] | None:
        r = cli("status", "--json", "-c", str(self.config), timeout=10)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def press(self, button: str) -> subprocess.CompletedProcess[str]:
        r = cli("simulate", "press", button, "-c", str(self.config))
        assert r.returncode == 0, r.stderr
        r2 = cli("simulate", "release", button, "-c", str(self.config))
        assert r2.returncode == 0, r2.stderr
        return r

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent_process(agent_config: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(agent_config)
    yield a
    a.close()


class Centre:
    """The real receiver, in a thread, with a persistent session (a fixed client id)."""

    def __init__(self, broker: Mosquitto, store: Path) -> None:
        self.broker, self.store = broker, store
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> Centre:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=run_receiver, args=(self.broker.url, "schools", self.store, "centre-test",
                                       self.stop_event), daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(5)

    def alarms(self) -> list[dict[str, Any]]:
        path = self.store / "alarms.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def centre(broker: Mosquitto, tmp_path: Path) -> Iterator[Centre]:
    c = Centre(broker, tmp_path / "centre")
    yield c
    c.stop()
