"""A simulated site: a private broker, the simulated school's config for it, the agent, and the
centre's receiver, each real, started and stopped as one by the tests, the benches and the demo.

Why one place: the simulated school's config was rebuilt in six places and the agent started
four ways, so a new config key or a change to start-up had to be made six times and was not.
Here ``school_config`` is the one way to write the config, :class:`InProcessAgent` and
:class:`AgentProcess` are the two ways to run the agent (in this process on mock pins, or as the
process systemd runs), and :class:`Centre` is the centre's receiver.

Nothing is left behind: a start that fails stops what it started before it raises, child
processes die with their parent, and an in-process agent cannot end the process that hosts it
(its supervisor's give-up, ``os._exit(70)`` in production, is recorded and raised on stop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from gpiozero.pins.mock import MockFactory

import agent
from agent import logs
from agent.box import control
from agent.box.daemon import Daemon
from agent.centre.link import Endpoint
from agent.centre.service import Receiver
from agent.config import default_config_text, load_config
from agent.config.model import Config
from agent.errors import AgentError
from agent.sdnotify import Notifier
from agent.supervision import Supervisor
from agent.testing import wait_for
from agent.testing.broker import Mosquitto, die_with_parent
from agent.testing.netns import run_in_netns
from agent.tracing import Tracer, no_trace

log = logging.getLogger("agent.testing")

PREFIX = "schools"
KEEPALIVE_S = 5  # the smallest the config allows: a dead link is noticed within 2 x this
# How long AgentProcess.start() waits for the agent's control socket. A workstation needs about a
# second; a Pi 3, or a Pi userland under emulation (tools/release-check.sh: 13 s cold), far more.
START_TIMEOUT_S = float(os.environ.get("EDGE_AGENT_TEST_START_S", "30"))
_AGENT_ROOT = str(Path(agent.__file__).resolve().parents[1])  # where `-m agent.cli` is found


Cameras = bool | list[dict[str, Any]] | Mapping[str, Mapping[str, Any]]


def school_config(
    path: Path,
    *,
    port: int,
    storage: Path,
    host: str = "127.0.0.1",
    cameras: Cameras = False,
    **sections: Any,
) -> Path:
    """Write the simulated school (agent/data/simulated-school.yaml) for a private broker.

    ``cameras``: False for none (quicker), True for the school's four synthetic ones, a mapping
    of some of them by id to the keys to change in each (``{"entrance-cam": {"post_alarm_s":
    2}}``; ``{}`` keeps one as it is), or a list of camera sections; buttons keep their links to
    the cameras that remain. ``sections`` are merged in: a mapping key by key (``mqtt=
    {"keepalive_s": 10}``); for a list of items with ids, a mapping of id to the keys to change
    in that item (``buttons={"gym": {"location": "..."}}``); anything else replaced
    (``buttons=[...]``).
    """
    data = yaml.safe_load(default_config_text())
    data["mqtt"].update({"host": host, "port": port, "keepalive_s": KEEPALIVE_S})
    if not host.startswith("127.") and host != "localhost":
        data["mqtt"]["allow_plaintext"] = True  # a private test namespace, not the internet
    data["storage"]["path"] = str(storage)
    if isinstance(cameras, Mapping):
        _change_by_id("cameras", data["cameras"], cameras)
        data["cameras"] = [c for c in data["cameras"] if c["id"] in cameras]
    elif cameras is not True:
        data["cameras"] = cameras or []
    if cameras is not True:
        ids = {c["id"] for c in data["cameras"]}
        for button in data["buttons"]:
            button["cameras"] = [c for c in button.get("cameras", []) if c in ids]
            if not button["cameras"]:
                del button["cameras"]
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key].update(value)
        elif isinstance(value, Mapping) and isinstance(data.get(key), list):
            _change_by_id(key, data[key], value)
        else:
            data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _change_by_id(
    section: str, items: list[dict[str, Any]], changes: Mapping[str, Mapping[str, Any]]
) -> None:
    by_id = {item["id"]: item for item in items}
    for item_id, change in changes.items():
        if item_id not in by_id:
            raise KeyError(f"the simulated school has no {section} item {item_id!r}")
        by_id[item_id].update(change)


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


class Centre:
    """The centre's real receiver (agent/centre/service.py) in this process, on its own
    threads, with a persistent session (a fixed client id), so the broker keeps alarms for it
    while it is away. With ``netns`` its connections are made inside that namespace; with
    ``ledger_url`` its ledger is the centre's shared PostgreSQL (``--ledger``)."""

    def __init__(
        self,
        broker_url: str,
        store: Path,
        *,
        client_id: str = "centre-test",
        netns: str | None = None,
        on_alarm: Callable[[dict[str, Any]], None] | None = None,
        tracer: Tracer = no_trace,
        ledger_url: str | None = None,
    ) -> None:
        self.url, self.store, self.client_id, self.netns = broker_url, store, client_id, netns
        self._on_alarm, self._tracer, self._ledger_url = on_alarm, tracer, ledger_url
        self.receiver: Receiver | None = None

    def start(self, subscribed_s: float | None = 10.0) -> Centre:
        """Start; with ``subscribed_s``, return once both of its sessions are subscribed."""
        self.receiver = Receiver.open(
            Endpoint.parse(self.url),
            PREFIX,
            self.store,
            self.client_id,
            self._on_alarm,
            ledger_url=self._ledger_url,
            tracer=self._tracer,
        )
        run_in_netns(self.netns, self.receiver.start)  # its link threads inherit the namespace
        if subscribed_s is not None:
            receiver = self.receiver
            wait_for(lambda: receiver.subscribed, subscribed_s, "the centre's receiver")
        return self

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None

    def alarms(self) -> list[dict[str, Any]]:
        """What the receiver stored, in its order (``alarms.jsonl``)."""
        path = self.store / "alarms.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def received_ids(self) -> set[str]:
        return {a["event_id"] for a in self.alarms()}


class Site:
    """Broker, config, centre and agent, started in that order and stopped in reverse.

    ``agent``: ``"thread"`` (:class:`InProcessAgent`), ``"process"`` (:class:`AgentProcess`)
    or None: none at :meth:`start`, one later with :meth:`start_agent`. ``sections`` go to
    :func:`school_config`; ``broker_conf`` to the broker's config; ``centre=False`` leaves the
    centre out. Layout under ``workdir``: ``broker/``, ``agent.yaml``, ``state/`` (the agent's
    storage), ``centre/`` (the receiver's store).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        agent: str | None = "thread",
        cameras: Cameras = False,
        centre: bool = True,
        broker_conf: str = "",
        on_alarm: Callable[[dict[str, Any]], None] | None = None,
        tracer: Tracer = no_trace,
        max_crashes: int = 5,
        **sections: Any,
    ) -> None:
        self.workdir = workdir
        self.broker = Mosquitto(workdir / "broker", extra_conf=broker_conf)
        self.config_path = workdir / "agent.yaml"
        self.storage = workdir / "state"
        self.centre = (
            Centre(self.broker.url, workdir / "centre", on_alarm=on_alarm, tracer=tracer)
            if centre
            else None
        )
        self.agent: InProcessAgent | AgentProcess | None = None
        self._kind, self._cameras, self._sections = agent, cameras, sections
        self._tracer, self._max_crashes = tracer, max_crashes

    def start(self) -> Site:
        try:
            self.broker.start()
            if self.centre is not None:
                self.centre.start()
            if self._kind is not None:
                self.start_agent()
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def start_agent(
        self, cameras: Cameras | None = None, *, process: bool = False, **sections: Any
    ) -> InProcessAgent | AgentProcess:
        """(Re)write the config, with ``cameras`` and ``sections`` over the site's, and start
        the agent (the same storage: the same box, its key and its outbox), as a process if
        the site's ``agent`` or ``process`` says so."""
        school_config(
            self.config_path,
            port=self.broker.port,
            storage=self.storage,
            cameras=self._cameras if cameras is None else cameras,
            **{**self._sections, **sections},
        )
        if process or self._kind == "process":
            self.agent = AgentProcess(self.config_path).start()
        else:
            self.agent = InProcessAgent(
                self.config_path, tracer=self._tracer, max_crashes=self._max_crashes
            ).start()
        return self.agent

    @property
    def daemon(self) -> Daemon:
        assert isinstance(self.agent, InProcessAgent), "the agent is not in this process"
        return self.agent.daemon

    def stop_agent(self, check: bool = True) -> None:
        agent, self.agent = self.agent, None
        if isinstance(agent, InProcessAgent):
            agent.stop(check)
        elif agent is not None:
            agent.close()

    def stop(self, check: bool = True) -> None:
        """Everything, whatever fails on the way; a supervisor that gave up is raised last."""
        try:
            self.stop_agent(check)
        finally:
            try:
                if self.centre is not None:
                    self.centre.stop()
            finally:
                self.broker.stop()

    def __enter__(self) -> Site:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


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
