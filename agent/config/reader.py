"""Reading YAML with a line on every value, and collecting every problem before raising.

Why hand-written and not pydantic: it must install on Raspberry Pi OS armhf, and every problem must
carry the exact line the technician has to fix. So the file is composed (not loaded) with PyYAML's
SafeLoader, which keeps a line on every node, and the node tree is walked with small converters.
Every problem in the file is collected before raising: a technician on a ladder wants one round
trip, not twenty. A key no builder reads is an unknown key, with a "did you mean".
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import yaml

from agent.config.model import Problem
from agent.errors import ConfigError
from agent.logs import redact as redact_url

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

# --------------------------------------------------------------------------------------------------
# The walker: a context that collects problems, a position in the tree, and a mapping reader.


NULL = "tag:yaml.org,2002:null"
BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
# A host name, an IPv4 address or an IPv6 one (two colons at least: "10.0.0.5:5000" is a host
# with a port, refused).
HOST_PATTERN = r"[A-Za-z0-9_.-]+|[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*"
YAML = yaml.SafeLoader("")  # only its scalar constructors are used, so YAML 1.1 means what it says


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


# --------------------------------------------------------------------------------------------------
# Converters: each turns one node into one value or raises Invalid with a technician's message.


def as_scalar(at: At, expected: str) -> yaml.ScalarNode:
    if not isinstance(at.node, yaml.ScalarNode) or is_null(at.node):
        raise Invalid(f"expected {expected}, got {describe(at.node)}")
    return at.node


def as_text(at: At) -> str:
    """The scalar as written, so `no`, `off` or `1.10` stay what the technician typed."""
    text = str(as_scalar(at, "text").value).strip()
    if not text:
        raise Invalid("must not be empty")
    return text


def matching(pattern: str, rule: str) -> Conv[str]:
    compiled = re.compile(pattern)

    def convert(at: At) -> str:
        text = as_text(at)
        if not compiled.fullmatch(text):
            raise Invalid(f"{show(text)} is not valid: {rule}")
        return text

    return convert


def as_choice(kind: type[E]) -> Conv[E]:
    """One of an enum's values, case-insensitive (`sia-dcs` is SIA-DCS); YAML 1.1's `off` (a
    bool) still reads as 'off'."""
    by_lower = {member.value.lower(): member for member in kind}
    allowed = [member.value for member in kind]

    def convert(at: At) -> E:
        text = as_text(at)
        if text.lower() not in by_lower:
            hint = (
                did_you_mean(text.lower(), list(by_lower))
                or f"; expected one of {', '.join(allowed)}"
            )
            raise Invalid(f"{show(text)} is not allowed here{hint}")
        return by_lower[text.lower()]

    return convert


def as_boolean(at: At) -> bool:
    node = as_scalar(at, "true or false")
    if node.tag != BOOL:
        quoted = " (without quotes)" if node.style in ("'", '"') else ""
        raise Invalid(f"expected true or false{quoted}, got {show(node.value)}")
    return YAML.construct_yaml_bool(node)


def yaml_number(at: At, tags: tuple[str, ...], expected: str) -> float:
    node = as_scalar(at, expected)
    text = str(node.value)
    if re.fullmatch(r"[-+]?0[0-9_]+", text):
        raise Invalid(f"write {text} without the leading 0: YAML reads it as an octal number")
    construct = YAML.construct_yaml_float if node.tag == FLOAT else YAML.construct_yaml_int
    try:
        value = float(construct(node)) if node.tag in tags else math.nan
    except (ValueError, IndexError, OverflowError):  # an explicit tag on bad text: !!int abc
        value = math.nan
    if math.isfinite(value):
        return value
    raise Invalid(f"expected {expected}, got {show(text)}")


def in_range(value: float, lo: float, hi: float | None, *, lo_open: bool = False) -> None:
    if (value > lo if lo_open else value >= lo) and (hi is None or value <= hi):
        return
    if hi is not None:
        raise Invalid(f"must be from {lo:g} to {hi:g}, got {value:g}")
    raise Invalid(f"must be {'more than' if lo_open else 'at least'} {lo:g}, got {value:g}")


def as_integer(lo: int, hi: int | None = None) -> Conv[int]:
    def convert(at: At) -> int:
        value = yaml_number(at, (INT,), "an integer")
        in_range(value, lo, hi)
        return int(value)

    return convert


def as_number(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Conv[float]:
    def convert(at: At) -> float:
        value = yaml_number(at, (INT, FLOAT), "a number")
        in_range(value, lo, hi, lo_open=lo_open)
        return value

    return convert


def as_path(*, must_exist: bool) -> Conv[Path]:
    """A path, relative ones resolved against the config file's directory."""

    def convert(at: At) -> Path:
        path = at.ctx.base_dir / as_text(at)
        mode = stat_mode(path) if must_exist else None
        if must_exist and mode is None:
            raise Invalid(f"file not found: {path}")
        if mode is not None and not stat.S_ISREG(mode):
            raise Invalid(f"not a regular file: {path}")
        return path

    return convert


def stat_mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None


def as_list_of(conv: Conv[T]) -> Conv[tuple[T, ...]]:
    def convert(at: At) -> tuple[T, ...]:
        if not isinstance(at.node, yaml.SequenceNode):
            raise Invalid(f"expected a list such as [a, b], got {describe(at.node)}")
        nodes = enumerate(at.node.value)
        items = [converted(conv, At(node, f"{at.path}[{i}]", at.ctx)) for i, node in nodes]
        good = tuple(item for item in items if item is not None)
        if len(good) != len(items):
            raise Invalid()
        return good

    return convert


def as_section(build: Callable[[Map], T | None]) -> Conv[T]:
    def convert(at: At) -> T:
        reader = Map(at)
        result = build(reader)
        reader.close()
        if result is None:
            raise Invalid()
        return result

    return convert


# --------------------------------------------------------------------------------------------------
# From text to Config.


def compose(
    text: str,
    ctx: Ctx,
    *,
    start: str = "start from agent.example.yaml",
    sections: str = "site:, mqtt: and buttons:",
) -> yaml.Node | None:
    """The node tree, or None with the reason reported (syntax, empty, not a mapping); ``start``
    and ``sections`` name, for the file being read, where to begin and what its top level holds."""

    def fail(line: int | None, message: str) -> None:
        ctx.problems.append(Problem(ctx.source, line, "", message))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        fail(mark.line + 1 if mark else None, syntax_message(err))
        return None
    except yaml.reader.ReaderError as err:
        fail(
            text.count("\n", 0, err.position) + 1,
            f"character #x{err.character:04x} is not allowed in YAML: remove it",
        )
        return None
    except RecursionError:
        fail(None, "nested too deeply to be a configuration file")
        return None
    if root is None or is_null(root):
        fail(None, f"the file is empty: {start}")
    elif not isinstance(root, yaml.MappingNode):
        fail(line(root), f"the top level must be sections such as {sections}, got {describe(root)}")
    else:
        return root
    return None


def syntax_message(err: yaml.MarkedYAMLError) -> str:
    """PyYAML's own words, without its snippet of the line: that could hold a camera password."""
    words = "YAML syntax error: " + ", ".join(w for w in (err.context, err.problem) if w)
    if "\\t" in words:
        words += ": indent with spaces, not tabs"
    return words


def read_text(path: str | Path, max_bytes: int, start: str) -> str:
    """A YAML file's text; every way reading it can fail is a ConfigError naming the file (and
    the line, for bytes that are not UTF-8). ``start``: what to begin from when it is missing."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(max_bytes + 1)
    except (OSError, ValueError) as err:
        raise ConfigError([Problem(source, None, "", unreadable(err, start))]) from None
    if len(raw) > max_bytes:
        raise ConfigError(
            [
                Problem(
                    source, None, "", f"larger than {max_bytes >> 20} MiB: is this the right file?"
                )
            ]
        )
    try:
        return raw.decode("utf-8-sig")  # a BOM from a Windows editor is harmless
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        message = f"not UTF-8 text (byte 0x{raw[err.start]:02x}): save the file as UTF-8"
        raise ConfigError([Problem(source, line, "", message)]) from None


def unreadable(err: OSError | ValueError, start: str = "start from agent.example.yaml") -> str:
    if isinstance(err, FileNotFoundError):
        return f"file not found ({start})"
    if isinstance(err, PermissionError):
        return "permission denied: run as the agent's user, or with sudo"
    if isinstance(err, OSError) and err.strerror:
        return f"cannot read the file: {err.strerror}"
    return f"cannot read the file: {err}"
