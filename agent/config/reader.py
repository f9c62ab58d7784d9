"""Reading YAML with a line on every value, and collecting every problem before raising.

Why hand-written and not pydantic: it must install on Raspberry Pi OS armhf, and every problem must
carry the exact line the technician has to fix. So the file is composed (not loaded) with PyYAML's
SafeLoader (agent/config/yamlfile.py), which keeps a line on every node, and the node tree is
walked here: a context that collects problems, a position in the tree, and a mapping reader, with
small converters (agent/config/converters.py). Every problem in the file is collected before
raising: a technician on a ladder wants one round trip, not twenty. A key no builder reads is an
unknown key, with a "did you mean".
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from agent.config.model import Problem
from agent.logs import redact as redact_url

T = TypeVar("T")

NULL = "tag:yaml.org,2002:null"


class Invalid(Exception):
    """A value failed its check: with a message it is reported at the value, else it already was."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Ctx:
    """One validation run: the problems so far, and what sections read before this one claimed."""

    source: str
    base_dir: Path
    problems: list[Problem] = field(default_factory=list)
    claims: dict[str, str] = field(default_factory=dict)  # "GPIO 17" -> "buttons[0] (entrance)"
    camera_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class At:
    """Where a value sits: its node (which knows its line) and its key path."""

    node: yaml.Node
    path: str
    ctx: Ctx

    def child(self, key: str, node: yaml.Node) -> At:
        return At(node, f"{self.path}.{key}" if self.path else key, self.ctx)

    def report(self, message: str) -> None:
        self.ctx.problems.append(Problem(self.ctx.source, line(self.node), self.path, message))


Conv = Callable[[At], T]


class Map:
    """A mapping read against its schema: the keys a builder reads are the keys allowed.

    Builders read all their keys before deciding anything, then `close()` reports the rest.
    """

    def __init__(self, at: At) -> None:
        if not isinstance(at.node, yaml.MappingNode):
            raise Invalid(f"expected a mapping of keys, got {describe(at.node)}")
        self.at = at
        self._asked: list[str] = []
        self._entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in at.node.value:
            self._add(key_node, value_node)

    def _add(self, key_node: yaml.Node, value_node: yaml.Node) -> None:
        if key_node.tag == "tag:yaml.org,2002:merge":
            self.at.child("<<", key_node).report(
                "YAML merge keys are not supported: write the keys out"
            )
        elif not isinstance(key_node, yaml.ScalarNode):
            At(key_node, self.at.path, self.at.ctx).report(
                f"keys must be plain names, got {describe(key_node)}"
            )
        elif key_node.value in self._entries:
            first = line(self._entries[key_node.value][0])
            self.at.child(key_node.value, key_node).report(
                f"duplicate key (first at line {first}): YAML would silently keep the last one"
            )
        else:
            self._entries[key_node.value] = (key_node, value_node)

    def present(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and not is_null(entry[1])

    def opt(self, key: str, conv: Conv[T]) -> T | None:
        """An optional key's value; None when absent, null, or invalid (then it is reported)."""
        self._asked.append(key)
        if not self.present(key):
            return None
        return converted(conv, self.at.child(key, self._entries[key][1]))

    def get(self, key: str, conv: Conv[T], default: T) -> T:
        value = self.opt(key, conv)
        return default if value is None else value

    def req(self, key: str, conv: Conv[T]) -> T | None:
        if not self.present(key):
            self.problem(key, "required but missing")
        return self.opt(key, conv)

    def problem(self, key: str, message: str) -> None:
        """Report at the key's value, or at the mapping when the key is absent."""
        node = self._entries[key][1] if key in self._entries else self.at.node
        self.at.child(key, node).report(message)

    def claim(self, key: str, label: str, owner: str) -> None:
        """Take `label` (a pin, an id) for `owner`; whoever takes it second gets the problem."""
        first = self.at.ctx.claims.setdefault(label, owner)
        if first != owner:
            self.problem(key, f"{label} is already used by {first}")

    def close(self) -> None:
        for name, (key_node, _) in self._entries.items():
            if name not in self._asked:
                hint = did_you_mean(name, self._asked) or f"; allowed: {', '.join(self._asked)}"
                self.at.child(name, key_node).report(f"unknown key {show(name)}{hint}")


def converted(conv: Conv[T], at: At) -> T | None:
    try:
        return conv(at)
    except Invalid as bad:
        if bad.message:
            at.report(bad.message)
        return None


def line(node: yaml.Node | None) -> int | None:
    return None if node is None or node.start_mark is None else node.start_mark.line + 1


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "nothing" if is_null(node) else show(node.value)


def show(text: str) -> str:
    """Quoted and short; redacted first, so a URL in the wrong place never leaks its password."""
    text = redact_url(text)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
