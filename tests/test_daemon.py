"""The daemon in-process and under a fake systemd: READY, WATCHDOG only while healthy, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.sdnotify import Notifier
from agent.testing.broker import Mosquitto
from tests.conftest import REPO, InProcessAgent, MqttClient, wait_alarms, wait_for


class FakeSystemd:
    """A NOTIFY_SOCKET that records every datagram, as systemd would receive them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def has(self, line: str) -> bool:
        return any(line in m.split("\n") for _, m in self.messages)

    def times(self, line: str) -> list[float]:
        return [t for t, m in self.messages if line in m.split("\n")]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def test_in_process_press_reaches_the_centre(
    in_process_agent: InProcessAgent, collector: MqttClient
) -> None:
    [result] = in_process_agent.press("entrance")
    [alarm] = wait_alarms(collector, 1)
    assert alarm["event_id"] == result["event_id"] and result["durable"]


def test_press_during_outage_is_taken_at_once(
    in_process_agent: InProcessAgent, broker: Mosquitto, collector: MqttClient
) -> None:
    box = in_process_agent
    wait_for(lambda: box.state == "online", 10, "online")
    broker.kill()
    wait_for(lambda: box.state != "online", 10, "the outage noticed")
    t0 = time.monotonic()
    [result] = box.press("gym")
    assert time.monotonic() - t0 < 0.5 and result["durable"]
    broker.start()
    [alarm] = wait_alarms(collector, 1, timeout=10)
    assert alarm["event_id"] == result["event_id"]


def test_watchdog_withheld_while_the_buttons_thread_hangs(
    agent_config: Path, tmp_path: Path
) -> None:
    fake = FakeSystemd(tmp_path / "notify.sock")
    os.environ["WATCHDOG_USEC"] = "1000000"
    try:
        box = InProcessAgent(agent_config, notifier=Notifier(str(fake.path)))
    finally:
        del os.environ["WATCHDOG_USEC"]
    d = box.daemon
    box.start(online_s=None)
    try:
        wait_for(lambda: fake.has("READY=1") and fake.has("WATCHDOG=1"), 5, "READY and pings")
        assert d.outbox is not None and d.buttons is not None
        with d.outbox._lock:  # the disk hangs: the next alarm commit blocks the buttons thread
            threading.Thread(
                target=d.buttons.simulate, args=("entrance", True, 30), daemon=True
            ).start()
            time.sleep(6.5)
            hung_at = time.monotonic() - 1.0
            assert not d.healthy()
            assert not any(t > hung_at for t in fake.times("WATCHDOG=1"))
        wait_for(d.healthy, 5, "recovery")
        resumed = time.monotonic()
        wait_for(lambda: any(t > resumed for t in fake.times("WATCHDOG=1")), 5, "pings resume")
    finally:
        box.stop()
        fake.close()


def test_process_speaks_sd_notify_and_stops_on_sigterm(agent_config: Path, tmp_path: Path) -> None:
    fake = FakeSystemd(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(fake.path), "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(agent_config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: fake.has("READY=1"), 10, "READY=1")
        wait_for(lambda: len(fake.times("WATCHDOG=1")) >= 2, 5, "watchdog pings")
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for _, m in fake.messages)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert fake.has("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.close()
