"""The one entry point the network reaches: a payload in, a result out, a handler run between.

Each command the box obeys is declared once, as a :class:`CommandSpec`: its type (name and
argument parser, agent/commands/args.py) and its handler, which takes a Command of that
parser's type. mypy checks the pair where it is written; the router checks at construction
that the verifier parses each name with the spec's own parser, so a handler can only ever get
the arguments its signature names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from agent.commands.args import CommandType
from agent.commands.verify import Command, CommandVerifier
from agent.commands.wire import CommandRejected, result_payload

log = logging.getLogger("agent.commands")

A = TypeVar("A")

Data = Mapping[str, object] | None  # a result's ``data``; None for nothing to report


@dataclass(frozen=True, slots=True)
class CommandSpec(Generic[A]):
    """One command the box obeys. The handler returns the result's data or raises
    CommandRejected with its own reason (which must not quote input); anything else it raises
    becomes ``internal_error`` on the wire and a traceback in the log."""

    kind: CommandType[A]
    handler: Callable[[Command[A]], Data]


@dataclass(frozen=True, slots=True)
class Reply:
    """What :meth:`CommandRouter.respond` made of one payload.

    ``authenticated`` is False for payloads refused before their signature verified: anyone who
    can publish on ``…/cmd`` can cause those, so the uplink should not queue them durably.
    """

    payload: bytes
    command_id: str | None
    ok: bool
    authenticated: bool


_FALLBACK: Final = b'{"id":null,"ok":false,"reason":"internal_error","data":{},"at":null,"v":1}'


class CommandRouter:
    """Verifies each payload and runs its spec's handler; never raises, never leaks.

    A name the verifier allows but no spec handles is answered ``unsupported``. Handlers run on
    the caller's thread (the uplink's): they should hand long work on.
    """

    def __init__(
        self,
        verifier: CommandVerifier,
        specs: Iterable[CommandSpec[Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._specs: dict[str, CommandSpec[Any]] = {}
        for spec in specs:
            if not verifier.allows(spec.kind):
                raise ValueError(
                    f"a handler for {spec.kind.name}, which the verifier does not "
                    "allow with this parser"
                )
            if spec.kind.name in self._specs:
                raise ValueError(f"two handlers for {spec.kind.name}")
            self._specs[spec.kind.name] = spec
        self._verifier = verifier
        self._clock = clock

    def handle(self, payload: bytes) -> bytes:
        return self.respond(payload).payload

    def respond(self, payload: bytes) -> Reply:
        try:
            return self._respond(payload)
        except Exception:  # a bug here must not reach the wire or take the uplink down
            log.exception("command router failed")
            try:
                return Reply(result_payload(None, False, "internal_error"), None, False, False)
            except Exception:
                return Reply(_FALLBACK, None, False, False)

    def _respond(self, payload: bytes) -> Reply:
        try:
            command = self._verifier.verify(payload)
        except CommandRejected as exc:
            authenticated = exc.command_id is not None
            log.warning(
                "command %s rejected: %s", exc.command_id or "(unauthenticated)", exc.reason
            )
            return self._reply(exc.command_id, False, exc.reason, None, authenticated)
        extra: dict[str, object] = {"clock_unsynced": True} if command.clock_unsynced else {}
        spec = self._specs.get(command.name)
        if spec is None:
            log.warning("command %s (%s) has no handler", command.id, command.name)
            return self._reply(
                command.id, False, "unsupported: no handler on this box", extra, True
            )
        try:
            # command.params came from spec.kind's parser: the verifier allows that very type
            data = spec.handler(command)
            if data is not None and not isinstance(data, Mapping):
                raise TypeError(f"handler returned {type(data).__name__}, not a mapping")
            reply = self._reply(command.id, True, "", {**(data or {}), **extra}, True)
        except CommandRejected as exc:
            log.warning(
                "command %s (%s) refused by its handler: %s", command.id, command.name, exc.reason
            )
            return self._reply(command.id, False, exc.reason, extra, True)
        except Exception:
            log.exception("handler for command %s (%s) failed", command.id, command.name)
            return self._reply(command.id, False, "internal_error: the handler failed", extra, True)
        log.info("command %s (%s) done", command.id, command.name)
        return reply

    def _reply(
        self,
        command_id: str | None,
        ok: bool,
        reason: str,
        data: Mapping[str, object] | None,
        authenticated: bool,
    ) -> Reply:
        payload = result_payload(command_id, ok, reason, data, at=self._clock())
        return Reply(payload, command_id, ok, authenticated)
