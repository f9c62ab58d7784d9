"""A simulated site: a private broker, the simulated school's config for it, the agent, and the
centre's receiver, each real, started and stopped as one by the tests, the benches and the demo.

Why one place: the simulated school's config was rebuilt in six places and the agent started
four ways, so a new config key or a change to start-up had to be made six times and was not.
``school_config`` (agent/testing/school.py) is the one way to write the config,
:class:`InProcessAgent` and :class:`AgentProcess` (agent/testing/agents.py) are the two ways to
run the agent (in this process on mock pins, or as the process systemd runs), and
:class:`Centre` is the centre's receiver. They are all importable from here.

Nothing is left behind: a start that fails stops what it started before it raises, and
:meth:`Site.stop` stops everything, whatever fails on the way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.box.daemon import Daemon
from agent.centre.link import Endpoint
from agent.centre.service import Receiver
from agent.testing import wait_for
from agent.testing.agents import AgentProcess, InProcessAgent, agent_logs_to
from agent.testing.broker import Mosquitto
from agent.testing.netns import run_in_netns
from agent.testing.school import KEEPALIVE_S, Cameras, school_config
from agent.tracing import Tracer, no_trace

__all__ = [
    "KEEPALIVE_S",
    "PREFIX",
    "AgentProcess",
    "Cameras",
    "Centre",
    "InProcessAgent",
    "Site",
    "agent_logs_to",
    "school_config",
]

PREFIX = "schools"


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
