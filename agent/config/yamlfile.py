"""A YAML file to its node tree: every way reading or composing it fails becomes a Problem with
the file's name and, where there is one, the line.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from agent.config.model import Problem
from agent.config.reader import Ctx, describe, is_null, line
from agent.errors import ConfigError


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


def stat_mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
