"""The config's converters: each turns one YAML node into one value, or raises Invalid with a
technician's message (reported at the node's line by agent/config/reader.py).
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import yaml

from agent.config.reader import (
    At,
    Conv,
    Invalid,
    Map,
    converted,
    describe,
    did_you_mean,
    is_null,
    show,
)
from agent.config.yamlfile import stat_mode

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
# A host name, an IPv4 address or an IPv6 one (two colons at least: "10.0.0.5:5000" is a host
# with a port, refused).
HOST_PATTERN = r"[A-Za-z0-9_.-]+|[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*"
YAML = yaml.SafeLoader("")  # only its scalar constructors are used, so YAML 1.1 means what it says


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
