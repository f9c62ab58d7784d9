"""Each command's type: its name and the parser that turns its args into a typed value.

A :class:`CommandType` is the contract for one command, shared by both ends: the centre refuses
to sign what a box would refuse (agent/commands/keys.py), the box's verifier refuses it, and a
handler is paired with the type whose value it takes (agent/commands/router.py), so mypy checks
that a handler gets the arguments it expects. The parsers check only the form of a value; a
handler still checks its meaning (that a camera is in this box's config, say).

Every limit is written once: here, or where it belongs (the walk test's, agent/box/walktest.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar

from agent.box.walktest import MAX_MINUTES
from agent.clock import parse_rfc3339
from agent.commands.wire import NAME, CommandRejected, Scalar
from agent.delivery.protocol import UUID

A = TypeVar("A")

MAX_LIVE_S: Final = 600
MAX_FETCH_SPAN_S: Final = 3600
_THING_ID = re.compile(r"[a-z0-9_-]{1,64}")
_CAMERA_RULE = "a camera id ([a-z0-9_-], 1 to 64 characters)"


@dataclass(frozen=True, slots=True)
class CommandType(Generic[A]):
    """A command's name and the parser of its args, which raises CommandRejected
    (``bad_args: …``) for args the command may not have."""

    name: str
    parse: Callable[[Mapping[str, Scalar]], A]

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(
                f"invalid command name {self.name!r}: use [a-z][a-z0-9_], at most 32 characters"
            )


@dataclass(frozen=True, slots=True)
class NoArgs:
    pass


@dataclass(frozen=True, slots=True)
class AckArgs:
    event_id: str


@dataclass(frozen=True, slots=True)
class LiveArgs:
    camera_id: str
    seconds: int


@dataclass(frozen=True, slots=True)
class FetchArgs:
    camera_id: str
    start: float  # the command's "from"
    end: float  # "to"


@dataclass(frozen=True, slots=True)
class TestModeArgs:
    __test__ = False  # not a pytest test class, whatever its name says

    on: bool
    minutes: int | None  # set when on, None when off


class _Args:
    """Reads one command's args the way the config reads a section: every key a parser does
    not ask for is an unexpected argument."""

    def __init__(self, args: Mapping[str, Scalar]) -> None:
        self._args = args
        self._asked: list[str] = []

    def _get(self, key: str) -> Scalar:
        self._asked.append(key)
        if key not in self._args:
            raise CommandRejected(f"bad_args: {key} is required")
        return self._args[key]

    def present(self, key: str) -> bool:
        return key in self._args

    def text(self, key: str, pattern: re.Pattern[str], rule: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise CommandRejected(f"bad_args: {key} must be {rule}")
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        value = self._get(key)
        if type(value) is not int or not lo <= value <= hi:
            raise CommandRejected(f"bad_args: {key} must be an integer from {lo} to {hi}")
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise CommandRejected(f"bad_args: {key} must be true or false")
        return value

    def timestamp(self, key: str) -> float:
        parsed = parse_rfc3339(self._get(key))
        if parsed is None:
            raise CommandRejected(
                f"bad_args: {key} must be RFC 3339 UTC such as 2026-11-25T08:00:00.000Z"
            )
        return parsed

    def done(self) -> None:
        if set(self._args) - set(self._asked):
            allowed = ", ".join(self._asked) or "none"
            raise CommandRejected(f"bad_args: unexpected argument (allowed: {allowed})")


def _no_args(args: Mapping[str, Scalar]) -> NoArgs:
    _Args(args).done()
    return NoArgs()


def _ack_args(args: Mapping[str, Scalar]) -> AckArgs:
    reader = _Args(args)
    event_id = reader.text("event_id", UUID, "a lower-case UUID")
    reader.done()
    return AckArgs(event_id)


def _live_args(args: Mapping[str, Scalar]) -> LiveArgs:
    reader = _Args(args)
    camera_id = reader.text("camera_id", _THING_ID, _CAMERA_RULE)
    seconds = reader.integer("seconds", 1, MAX_LIVE_S)
    reader.done()
    return LiveArgs(camera_id, seconds)


def _fetch_args(args: Mapping[str, Scalar]) -> FetchArgs:
    reader = _Args(args)
    camera_id = reader.text("camera_id", _THING_ID, _CAMERA_RULE)
    start = reader.timestamp("from")
    end = reader.timestamp("to")
    reader.done()
    if not 0 < round((end - start) * 1000) <= MAX_FETCH_SPAN_S * 1000:  # ms: the wire's unit
        raise CommandRejected(f"bad_args: to must be after from, by at most {MAX_FETCH_SPAN_S} s")
    return FetchArgs(camera_id, start, end)


def _test_mode_args(args: Mapping[str, Scalar]) -> TestModeArgs:
    reader = _Args(args)
    on = reader.boolean("on")
    if on:
        minutes: int | None = reader.integer("minutes", 1, MAX_MINUTES)
    elif reader.present("minutes"):
        raise CommandRejected("bad_args: minutes goes only with on: true")
    else:
        minutes = None
    reader.done()
    return TestModeArgs(on, minutes)


PING: Final = CommandType("ping", _no_args)
ACK: Final = CommandType("ack", _ack_args)
LIVE: Final = CommandType("live", _live_args)
FETCH: Final = CommandType("fetch", _fetch_args)
TEST_MODE: Final = CommandType("test_mode", _test_mode_args)

# What a box allows unless told otherwise, and what the centre checks before it signs.
STANDARD: Final[Mapping[str, CommandType[Any]]] = MappingProxyType(
    {kind.name: kind for kind in (PING, ACK, LIVE, FETCH, TEST_MODE)}
)
