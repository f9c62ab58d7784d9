"""Commands from the centre in the running agent: verified, handled, answered.

Only with the centre's public key: a box that cannot verify obeys nothing. Each command is
checked against the key, the site and the replay cache (agent/commands/verify.py), handled
(agent/box/handlers.py) and answered, all on the uplink thread that brought it: through the
outbox when it was authenticated, so that a result survives a lost connection; otherwise once
and never stored, because anyone able to publish could otherwise fill the box's disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.box.handlers import BoxCommands
from agent.commands.keys import load_public_key
from agent.commands.nonces import NonceStore
from agent.commands.router import CommandRouter
from agent.commands.verify import CommandVerifier
from agent.config.model import Config
from agent.delivery.outbox import Outbox
from agent.delivery.protocol import Priority, Topics
from agent.delivery.uplink.link import Uplink
from agent.errors import AgentError
from agent.tracing import Point, Tracer

log = logging.getLogger("agent.daemon")


class CentreCommands:
    """Open with :meth:`open` (None: commands disabled); :meth:`close` with the agent."""

    def __init__(
        self,
        router: CommandRouter,
        nonces: NonceStore,
        topics: Topics,
        outbox: Outbox,
        tracer: Tracer,
    ) -> None:
        self._router = router
        self._nonces = nonces
        self._topics = topics
        self._outbox = outbox
        self._trace = tracer  # the benches' points (agent/tracing.py)

    @classmethod
    def open(
        cls,
        cfg: Config,
        storage: Path,
        handlers: BoxCommands,
        topics: Topics,
        outbox: Outbox,
        tracer: Tracer,
    ) -> CentreCommands | None:
        """With ``commands.public_key_file`` and a replay cache that opens; else None, said."""
        key_file = cfg.commands.public_key_file
        if key_file is None:
            log.info("commands disabled: no commands.public_key_file in the config")
            return None
        nonces: NonceStore | None = None
        try:
            nonces = NonceStore.open(storage / "nonces.db")
            verifier = CommandVerifier(load_public_key(key_file), cfg.site.id, nonces)
        except AgentError as exc:
            log.error("commands disabled: %s", exc)
            if nonces is not None:
                nonces.close()
            return None
        return cls(CommandRouter(verifier, handlers.specs()), nonces, topics, outbox, tracer)

    def close(self) -> None:
        self._nonces.close()

    def on_message(self, uplink: Uplink, topic: str, payload: bytes) -> None:
        """A message ``uplink`` received (not a receipt, nor presence), on its thread."""
        if topic != self._topics.cmd:
            return
        self._trace(Point.COMMAND, "")
        reply = self._router.respond(payload)
        self._trace(Point.APPLIED, reply.command_id or "")
        if reply.authenticated and reply.command_id is not None:
            self._outbox.add(
                Priority.CONTROL,
                self._topics.cmd_result,
                f"result/{reply.command_id}",
                reply.payload,
            )
            uplink.wake()
        else:
            uplink.post_transient(self._topics.cmd_result, reply.payload)
