"""A private Mosquitto broker on a free loopback port: for ``edge-agent demo`` and the tests.

It is the real broker, not a fake, so what the demo shows and what the tests prove is what a
school sees. The process is put in its own session and killed with its parent's exit
(PR_SET_PDEATHSIG), so a crashed demo or test run never leaves a broker behind.

By default it listens anonymously on loopback. ``listeners=`` replaces that with a complete
listener/TLS/ACL section instead, such as the production one in docs/broker.md, which the broker
security tests run as written.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import AgentError


class BrokerError(AgentError, RuntimeError):
    """The private broker could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """For ``preexec_fn``: the child is SIGKILLed when the process that started it dies, so a
    crashed test run or demo leaves no broker or agent behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Mosquitto:
    """``start()`` launches; ``kill()`` is SIGKILL (a crash); ``start()`` again reuses the port.

    Persistence is on and, by default, saved on every change, so a persistent session (the
    centre's receiver) survives the broker being killed at any instant: the fault tests kill it.
    That rewrites the whole database after each message, which holds the broker still during a
    burst (1,000 alarms: the last receipt 2.4 s instead of 0.6 s, bench/alarm_storm.py), so a
    bench measures with ``save_every_change=False``: Debian's default, a save every 30 minutes.

    ``listeners``, when given, replaces the default ``listener {port} 127.0.0.1`` and
    ``allow_anonymous true``: it is the whole listener and security section, and ``start()``
    waits for every ``listener`` port in it (``port`` is then only used if the text uses it).
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = ""
    proc: subprocess.Popen[bytes] | None = None
    listeners: str | None = None
    bind: str = "127.0.0.1"
    save_every_change: bool = True

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 5.0) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise BrokerError(
                "mosquitto is not installed: run ./install.sh --dev (or apt-get install mosquitto)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        listeners = self.listeners
        if listeners is None:
            listeners = f"listener {self.port} {self.bind}\nallow_anonymous true\n"
        autosave = (
            "autosave_on_changes true\nautosave_interval 1\n"
            if self.save_every_change
            else "autosave_interval 1800\n"
        )
        text = (
            f"{listeners.rstrip()}\n"
            # Started as root, mosquitto would switch to the `mosquitto` user, which cannot read
            # the keys or write the persistence file in a workdir we own; as anyone else this
            # line has no effect.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            f"{autosave}"
            "set_tcp_nodelay true\n"  # else Nagle can hold an alarm ~40 ms behind an ACK
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            f"{self.extra_conf}\n"
        )
        conf.write_text(text)
        ports = [int(p) for p in re.findall(r"^listener\s+(\d+)", text, re.MULTILINE)]
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.command(exe, conf),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited at start; see {self.workdir}/mosquitto.log")
            if all(self.accepts(port) for port in ports):
                return
            time.sleep(0.02)
        self.kill()
        raise BrokerError(
            f"mosquitto did not listen on port(s) {ports} within {timeout} s;"
            f" see {self.workdir}/mosquitto.log"
        )

    def command(self, exe: str, conf: Path) -> list[str]:
        return [exe, "-c", str(conf)]

    def accepts(self, port: int) -> bool:
        """Whether the broker takes a TCP connection on ``port`` (it listens)."""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when the broker host dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
