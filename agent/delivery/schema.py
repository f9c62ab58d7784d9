"""Strict decoding of JSON from a peer that may be hostile: one schema per message kind.

The centre receives from 7,600 boxes, any of which may have been opened, stolen or re-flashed,
and a box receives commands; neither trusts a byte before it passed these checks, in this order
(each refusal names the rule, never quotes the payload):

1. ``too_large``: the size, before any copy or parse, so the work per message is bounded;
2. ``not_json``: strict UTF-8 (``json.loads`` given bytes would also guess UTF-16 and UTF-32),
   no duplicate key (two parsers could disagree on its value), no NaN or Infinity, bounded
   nesting;
3. ``not_object``: a JSON object;
4. ``missing_field`` / ``unknown_field``: exactly the schema's fields;
5. ``bad_field``: each value's exact type (a bool is not an integer, 1.0 is not 1), range or
   length, and characters: identifiers match their pattern, free text has no control or
   invisible character (agent/logs.py UNSAFE_CHARS), timestamps are real dates.

What passes is a plain dict whose values have the declared types, so nothing downstream (SQLite,
a log line, a path) ever sees a string where it expects a number. The schemas themselves are in
agent/delivery/protocol.py, next to the dataclasses the box encodes from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.clock import parse_rfc3339
from agent.errors import ProtocolError
from agent.logs import UNSAFE_CHARS


class WireError(ProtocolError):
    """A message refused on its face. ``rule`` is the first word (see the module docstring)."""

    def __init__(self, rule: str, detail: str = "") -> None:
        self.rule = rule
        super().__init__(f"{rule}: {detail}" if detail else rule)


class _DuplicateKey(ValueError):
    pass


def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook``: two values for one key would let two JSON parsers disagree."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _no_constant(_name: str) -> object:
    raise ValueError("NaN and Infinity are not JSON")


def load_object(
    payload: bytes | bytearray | memoryview, max_bytes: int, what: str = "a message"
) -> dict[str, object]:
    """Rules 1 to 3: the payload as a dict, or WireError."""
    if memoryview(payload).nbytes > max_bytes:  # before any copy or parse
        raise WireError("too_large", f"at most {max_bytes} bytes")
    try:
        doc: object = json.loads(
            bytes(payload).decode("utf-8"),
            object_pairs_hook=no_duplicates,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError:
        raise WireError("not_json", "not UTF-8") from None
    except _DuplicateKey:
        raise WireError("not_json", "duplicate key") from None
    except RecursionError:
        raise WireError("not_json", "nested too deeply") from None
    except ValueError:
        raise WireError("not_json") from None
    if not isinstance(doc, dict):
        raise WireError("not_object", f"{what} is a JSON object")
    return doc


class Field(Protocol):
    @property
    def rule(self) -> str:
        """What a valid value is, for the refusal."""

    def valid(self, value: object) -> bool: ...


@dataclass(frozen=True, slots=True)
class Text:
    """A string of ``min_chars`` to ``max_chars`` characters; with ``pattern``, matching it in
    full; without, free text (any script) with no control or invisible character."""

    rule: str
    max_chars: int
    min_chars: int = 0
    pattern: re.Pattern[str] | None = None

    def valid(self, value: object) -> bool:
        if not isinstance(value, str) or not self.min_chars <= len(value) <= self.max_chars:
            return False
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return UNSAFE_CHARS.search(value) is None


@dataclass(frozen=True, slots=True)
class Int:
    lo: int
    hi: int

    @property
    def rule(self) -> str:
        return f"an integer from {self.lo} to {self.hi}"

    def valid(self, value: object) -> bool:
        return type(value) is int and self.lo <= value <= self.hi


@dataclass(frozen=True, slots=True)
class Bool:
    rule: str = "true or false"

    def valid(self, value: object) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class OneOf:
    values: frozenset[str]

    @property
    def rule(self) -> str:
        return "one of " + ", ".join(sorted(self.values))

    def valid(self, value: object) -> bool:
        return isinstance(value, str) and value in self.values


@dataclass(frozen=True, slots=True)
class Timestamp:
    rule: str = "RFC 3339 UTC with milliseconds such as 2026-11-25T08:00:00.000Z"

    def valid(self, value: object) -> bool:
        return parse_rfc3339(value) is not None


@dataclass(frozen=True, slots=True)
class Nullable:
    inner: Field

    @property
    def rule(self) -> str:
        return f"null or {self.inner.rule}"

    def valid(self, value: object) -> bool:
        return value is None or self.inner.valid(value)


@dataclass(frozen=True, slots=True)
class Schema:
    """One message kind: ``required`` fields must be present, ``optional`` ones may be."""

    what: str
    max_bytes: int
    required: Mapping[str, Field]
    optional: Mapping[str, Field] = field(default_factory=dict)

    def decode(self, payload: bytes | bytearray | memoryview) -> dict[str, object]:
        return self.check(load_object(payload, self.max_bytes, self.what))

    def check(self, doc: Mapping[str, object]) -> dict[str, object]:
        """Rules 4 and 5 on an already parsed object."""
        for key in self.required:
            if key not in doc:
                raise WireError("missing_field", f"{self.what} needs {key}")
        if len(doc) > len(self.required) + len(self.optional) or any(
            key not in self.required and key not in self.optional for key in doc
        ):
            allowed = ", ".join([*self.required, *self.optional])
            raise WireError("unknown_field", f"{self.what} has only {allowed}")
        for key, value in doc.items():
            spec = self.required.get(key) or self.optional[key]
            if not spec.valid(value):
                raise WireError("bad_field", f"{key} must be {spec.rule}")
        return dict(doc)
