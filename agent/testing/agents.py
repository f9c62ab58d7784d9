"""The two ways to run the agent in a test, a bench or the demo: :class:`InProcessAgent` (this
process, mock pins) and :class:`AgentProcess` (the process systemd runs).

Nothing is left behind: a start that fails stops what it started before it raises, child
processes die with their parent, and an in-process agent cannot end the process that hosts it
(its supervisor's give-up, ``os._exit(70)`` in production, is recorded and raised on stop).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

import agent
from agent import logs
from agent.box import control
from agent.box.daemon import Daemon
from agent.config import load_config
from agent.config.model import Config
from agent.errors import AgentError
from agent.sdnotify import Notifier
from agent.supervision import Supervisor
from agent.testing import wait_for
from agent.testing.broker import die_with_parent
from agent.tracing import Tracer, no_trace

log = logging.getLogger("agent.testing")

# How long AgentProcess.start() waits for the agent's control socket. A workstation needs about a
# second; a Pi 3, or a Pi userland under emulation (tools/release-check.sh: 13 s cold), far more.
START_TIMEOUT_S = float(os.environ.get("EDGE_AGENT_TEST_START_S", "30"))
_AGENT_ROOT = str(Path(agent.__file__).resolve().parents[1])  # where `-m agent.cli` is found


class InProcessAgent:
    """The Daemon in this process on mock pins (``pins``), served on a thread as
    ``edge-agent run`` serves it, minus the signal handlers.

    Its supervisor's give-up (a spent restart budget, a hung thread) would end the process
    with ``os._exit(70)``, which here would be a test run or a bench: it is logged and kept in
    ``gave_up`` instead, and :meth:`stop` raises it, so the test fails loudly.
    """

    def __init__(
        self,
        config: Path | Config,
        *,
        tracer: Tracer = no_trace,
        max_crashes: int = 5,
        notifier: Notifier | None = None,
        health_interval_s: float = 60.0,
    ) -> None:
        cfg = config if isinstance(config, Config) else load_config(config)
        self.pins = MockFactory()
        self.gave_up: str | None = None
        self.daemon = Daemon(
            cfg,
            notifier=notifier or Notifier(None),
            pin_factory=self.pins,
            supervisor=Supervisor(max_crashes=max_crashes, give_up=self._give_up),
            health_interval_s=health_interval_s,
            tracer=tracer,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _give_up(self, reason: str) -> None:
        log.critical("the agent's supervisor gave up (in production: exit 70): %s", reason)
        self.gave_up = reason

    def start(self, online_s: float | None = 10.0) -> InProcessAgent:
        """Start; with ``online_s``, return once the uplink is online."""
        try:
            self.daemon.start()
            self._thread = threading.Thread(
                target=self.daemon.serve, args=(self._stop,), name="serve", daemon=True
            )
            self._thread.start()
            if online_s is not None:
                wait_for(lambda: self.state == "online", online_s, "the agent's uplink online")
        except BaseException:
            self.stop(check=False)
            raise
        return self

    @property
    def state(self) -> str:
        uplink = self.daemon.uplink
        return str(uplink.state) if uplink is not None else "starting"

    def press(self, button: str) -> list[dict[str, Any]]:
        """Press (and hold) a button as `edge-agent simulate press` does; the events it made."""
        assert self.daemon.buttons is not None
        return self.daemon.buttons.simulate(button, True)

    def release(self, button: str) -> None:
        """Release, and wait until the button has re-armed (see AgentProcess.press)."""
        buttons = self.daemon.buttons
        assert buttons is not None
        buttons.simulate(button, False)
        wait_for(
            lambda: buttons.snapshot()[button]["state"] == "idle",
            5,
            f"button {button} to re-arm",
            poll_s=0.0005,
        )

    def stop(self, check: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.daemon.stop()
        if check and self.gave_up is not None:
            raise AssertionError(f"the agent's supervisor gave up: {self.gave_up}")


@dataclass
class AgentProcess:
    """The agent as systemd runs it (``edge-agent run -c CONFIG``), optionally inside a network
    namespace and with extra environment (libfaketime). Its log is ``CONFIG`` with ``.log``."""

    config: Path
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> AgentProcess:
        """Run the agent; return once its control socket answers (EDGE_AGENT_TEST_START_S).

        If it does not (the agent exited, or is too slow), the agent is killed before the error
        is raised, with its log in the message: a failed start never leaves an agent running.
        """
        self.log_path = self.config.with_suffix(".log")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        path = os.pathsep.join(p for p in (_AGENT_ROOT, os.environ.get("PYTHONPATH")) if p)
        with open(self.log_path, "a") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')} ---\n")
            out.flush()
            proc = self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "agent.cli", "run", "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                preexec_fn=die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **self.env},
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

    def call(self, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """One control-socket request, as the `edge-agent` commands make them."""
        storage = Path(load_config(self.config).storage.path)
        return control.call(control.socket_path(storage), request, timeout)

    def status(self) -> dict[str, Any] | None:
        """What `edge-agent status --json` shows, or None while the agent does not answer."""
        try:
            reply = self.call({"cmd": "status"}, timeout=5)
        except AgentError:  # not up (ControlError), or no valid config to find it by
            return None
        return reply.get("status") if reply.get("ok") else None

    def press(self, button: str) -> list[dict[str, Any]]:
        """Press and release, as `edge-agent simulate press|release`, then wait until the
        button has re-armed (a press within ``release_s`` of the release is a bounce); the
        events the press made."""
        reply = self.call({"cmd": "simulate", "action": "press", "button": button})
        assert reply.get("ok"), reply
        self.call({"cmd": "simulate", "action": "release", "button": button})
        wait_for(
            lambda: (self.status() or {})["buttons"][button]["state"] == "idle",
            5,
            f"button {button} to re-arm",
        )
        return [e for e in reply.get("events", []) if e]

    def uplink_state(self) -> str:
        return str(((self.status() or {}).get("uplink") or {}).get("state", ""))

    def outbox(self) -> dict[str, Any]:
        return dict((self.status() or {}).get("outbox") or {})

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def agent_logs_to(path: Path) -> Iterator[None]:
    """The agent's own log set-up (agent/logs.py) with its stream sent to a file: an
    in-process agent pays for formatting and writing its lines as in production, and the
    bench's or demo's stdout stays its own."""
    logs.setup("info")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    with open(path, "a", encoding="utf-8") as f:
        handler.setStream(f)
        try:
            yield
        finally:
            handler.setStream(sys.stderr)
