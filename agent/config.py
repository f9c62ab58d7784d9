"""The one YAML file technicians write, validated as a contract.

Why hand-written and not pydantic: it must install on Raspberry Pi OS armhf, and every problem must
carry the exact line the technician has to fix. So the file is composed (not loaded) with PyYAML's
SafeLoader, which keeps a line on every node, and the node tree is walked against a schema made of
small converters. Every problem in the file is collected before raising: a technician on a ladder
wants one round trip, not twenty.

How the schema reads: each section has one builder that reads its keys through `_Map`, and a key no
builder reads is an unknown key, so the schema lives in one place. Defaults of the always-optional
sections live on their dataclasses; defaults of sections with required keys live in their builders.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml

from agent.delivery.protocol import ITEM_ID, MAX_LABEL_CHARS, SITE_ID
from agent.errors import ConfigError
from agent.logs import UNSAFE_CHARS, redact

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)
Item = TypeVar("Item", "ButtonConfig", "CameraConfig")

# --------------------------------------------------------------------------------------------------
# The contract: what the rest of the agent receives.


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding, printed as the line a technician reads next to the file in an editor."""

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class Wiring(StrEnum):
    NORMALLY_OPEN = "normally_open"
    NORMALLY_CLOSED = "normally_closed"


class GpioBackend(StrEnum):
    AUTO = "auto"
    MOCK = "mock"
    LGPIO = "lgpio"
    RPIGPIO = "rpigpio"
    PIGPIO = "pigpio"
    NATIVE = "native"


class LiveMode(StrEnum):
    ON_DEMAND = "on_demand"
    ALWAYS = "always"


class RecordingMode(StrEnum):
    OFF = "off"
    CONTINUOUS = "continuous"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class SiteConfig:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Client certificate files are both set or both None; no ca_file means the system CAs."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    topic_prefix: str
    keepalive_s: int
    client_id: str
    tls: TlsConfig | None
    username: str | None
    password_file: Path | None
    allow_plaintext: bool

    @property
    def tls_enabled(self) -> bool:
        return self.tls is not None


@dataclass(frozen=True, slots=True)
class GpioConfig:
    backend: GpioBackend = GpioBackend.AUTO


@dataclass(frozen=True, slots=True)
class ButtonConfig:
    """`cameras` None means every camera: a new camera then needs no edit of each button."""

    id: str
    pin: int
    location: str
    wiring: Wiring
    hold_s: float
    cameras: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class LiveConfig:
    mode: LiveMode = LiveMode.ON_DEMAND
    source: str | None = None


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """`source` is kept as written, except that `file:` sources are made absolute (file:///...)."""

    id: str
    source: str
    segment_s: float
    pre_alarm_s: float
    post_alarm_s: float
    width: int
    height: int
    fps: int
    bitrate_kbps: int
    live: LiveConfig

    @property
    def kind(self) -> str:
        """The source scheme (rtsp, rtsps, v4l2, picamera2, file, synthetic) to pick a reader by."""
        return self.source.partition(":")[0].lower()

    @property
    def live_source(self) -> str:
        return self.live.source or self.source


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: Path = Path("/var/lib/edge-agent")
    max_gb: float = 2.0


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    """With mode continuous, path and max_gb are always set (the validator insists)."""

    mode: RecordingMode = RecordingMode.OFF
    path: Path | None = None
    max_gb: float | None = None
    retention_h: float = 24.0


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    max_kbps: int | None = None  # a ceiling on video; the rate below it is found (auto_rate)
    auto_rate: bool = True  # false: video as fast as TCP allows, up to max_kbps


@dataclass(frozen=True, slots=True)
class IndicatorsConfig:
    led_pin: int | None = None
    buzzer_pin: int | None = None
    ack_timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    public_key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True, slots=True)
class Config:
    """`source` is the file it came from (None for text): config_warnings checks its mode."""

    site: SiteConfig
    mqtt: MqttConfig
    gpio: GpioConfig
    buttons: tuple[ButtonConfig, ...]
    cameras: tuple[CameraConfig, ...]
    storage: StorageConfig
    recording: RecordingConfig
    uplink: UplinkConfig
    indicators: IndicatorsConfig
    commands: CommandsConfig
    log: LogConfig
    source: Path | None = None

    def button(self, button_id: str) -> ButtonConfig:
        return _by_id(self.buttons, button_id)

    def camera(self, camera_id: str) -> CameraConfig:
        return _by_id(self.cameras, camera_id)

    def cameras_for(self, button_id: str) -> tuple[CameraConfig, ...]:
        """The cameras whose footage goes with this button's alarm, the default 'all' resolved."""
        wanted = self.button(button_id).cameras
        return self.cameras if wanted is None else tuple(self.camera(c) for c in wanted)


def _by_id(items: tuple[Item, ...], wanted: str) -> Item:
    for item in items:
        if item.id == wanted:
            return item
    raise KeyError(f"no {wanted!r} in the configuration")


# --------------------------------------------------------------------------------------------------
# Public functions.


_MAX_BYTES = 1 << 20  # a config file is a few KB; more means the wrong file was given


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every way it can fail becomes a ConfigError."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_BYTES + 1)
    except (OSError, ValueError) as err:
        raise ConfigError([Problem(source, None, "", _unreadable(err))]) from None
    if len(raw) > _MAX_BYTES:
        raise ConfigError([Problem(source, None, "", "larger than 1 MiB: is this the right file?")])
    try:
        text = raw.decode("utf-8-sig")  # a BOM from a Windows editor is harmless
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        message = f"not UTF-8 text (byte 0x{raw[err.start]:02x}): save the file as UTF-8"
        raise ConfigError([Problem(source, line, "", message)]) from None
    origin = Path(path).absolute()
    return _parse(text, source, origin.parent, origin)


def parse_config(text: str, source: str = "<string>", *, base_dir: Path | None = None) -> Config:
    """Validate config text; relative paths resolve against base_dir, by default the current dir."""
    return _parse(text, source, base_dir or Path.cwd(), None)


def default_config_text() -> str:
    """The embedded simulated school, so the agent and its demo run with no file on disk."""
    data = resources.files("agent").joinpath("data", "simulated-school.yaml")
    return data.read_text(encoding="utf-8")


def format_report(err: ConfigError) -> str:
    """What `edge-agent check-config` prints: every problem, then the count where the eye ends."""
    sources = sorted({p.source for p in err.problems if isinstance(p, Problem)})
    count = len(err.problems)
    summary = f"{count} problem{'' if count == 1 else 's'} in {', '.join(sources) or 'the config'}"
    return "\n".join([*(str(p) for p in err.problems), summary])


# The one redactor (agent/logs.py), under the name camera and selftest messages use.
redact_url = redact


def config_warnings(cfg: Config) -> list[str]:
    """Files other local users can read (secrets) or replace (trust anchors).

    Warnings, not errors: a wrong file mode must never stop the alarms. The centre's public key
    and the CA are public, so for them only write access by others matters.
    """
    tls = cfg.mqtt.tls or TlsConfig()
    checks = [(p, 0o006, "holds secrets", "640") for p in
              (cfg.source, cfg.mqtt.password_file, tls.key_file)]
    checks += [(p, 0o002, "is trusted to verify the centre", "644") for p in
               (tls.ca_file, cfg.commands.public_key_file)]
    warnings = []
    for path, exposed, why, fix in checks:
        mode = stat.S_IMODE(_stat_mode(path) or 0) if path else 0
        if mode & exposed:
            warnings.append(f"{path} is open to every user on this machine (mode {mode:04o}) but"
                            f" {why}: run chmod {fix} {path} (the agent reads it via its group)")
    return warnings


# --------------------------------------------------------------------------------------------------
# The walker: a context that collects problems, a position in the tree, and a mapping reader.


_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_YAML = yaml.SafeLoader("")  # only its scalar constructors are used, so YAML 1.1 means what it says


class _Invalid(Exception):
    """A value failed its check: with a message it is reported at the value, else it already was."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Ctx:
    """One validation run: the problems so far, and what sections read before this one claimed."""

    source: str
    base_dir: Path
    problems: list[Problem] = field(default_factory=list)
    claims: dict[str, str] = field(default_factory=dict)  # "GPIO 17" -> "buttons[0] (entrance)"
    camera_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _At:
    """Where a value sits: its node (which knows its line) and its key path."""

    node: yaml.Node
    path: str
    ctx: _Ctx

    def child(self, key: str, node: yaml.Node) -> _At:
        return _At(node, f"{self.path}.{key}" if self.path else key, self.ctx)

    def report(self, message: str) -> None:
        self.ctx.problems.append(Problem(self.ctx.source, _line(self.node), self.path, message))


Conv = Callable[[_At], T]


class _Map:
    """A mapping read against its schema: the keys a builder reads are the keys allowed.

    Builders read all their keys before deciding anything, then `close()` reports the rest.
    """

    def __init__(self, at: _At) -> None:
        if not isinstance(at.node, yaml.MappingNode):
            raise _Invalid(f"expected a mapping of keys, got {_describe(at.node)}")
        self.at = at
        self._asked: list[str] = []
        self._entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in at.node.value:
            self._add(key_node, value_node)

    def _add(self, key_node: yaml.Node, value_node: yaml.Node) -> None:
        if key_node.tag == "tag:yaml.org,2002:merge":
            self.at.child("<<", key_node).report("YAML merge keys are not supported: write the"
                                                 " keys out")
        elif not isinstance(key_node, yaml.ScalarNode):
            _At(key_node, self.at.path, self.at.ctx).report(
                f"keys must be plain names, got {_describe(key_node)}")
        elif key_node.value in self._entries:
            first = _line(self._entries[key_node.value][0])
            self.at.child(key_node.value, key_node).report(
                f"duplicate key (first at line {first}): YAML would silently keep the last one"
            )
        else:
            self._entries[key_node.value] = (key_node, value_node)

    def present(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and not _is_null(entry[1])

    def opt(self, key: str, conv: Conv[T]) -> T | None:
        """An optional key's value; None when absent, null, or invalid (then it is reported)."""
        self._asked.append(key)
        if not self.present(key):
            return None
        return _convert(conv, self.at.child(key, self._entries[key][1]))

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
                hint = _did_you_mean(name, self._asked) or f"; allowed: {', '.join(self._asked)}"
                self.at.child(name, key_node).report(f"unknown key {_show(name)}{hint}")


def _convert(conv: Conv[T], at: _At) -> T | None:
    try:
        return conv(at)
    except _Invalid as bad:
        if bad.message:
            at.report(bad.message)
        return None


def _line(node: yaml.Node | None) -> int | None:
    return None if node is None or node.start_mark is None else node.start_mark.line + 1


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "nothing" if _is_null(node) else _show(node.value)


def _show(text: str) -> str:
    """Quoted and short; redacted first, so a URL in the wrong place never leaks its password."""
    text = redact_url(text)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------------------
# Converters: each turns one node into one value or raises _Invalid with a technician's message.


def _scalar(at: _At, expected: str) -> yaml.ScalarNode:
    if not isinstance(at.node, yaml.ScalarNode) or _is_null(at.node):
        raise _Invalid(f"expected {expected}, got {_describe(at.node)}")
    return at.node


def _text(at: _At) -> str:
    """The scalar as written, so `no`, `off` or `1.10` stay what the technician typed."""
    text = str(_scalar(at, "text").value).strip()
    if not text:
        raise _Invalid("must not be empty")
    return text


def _matching(pattern: str, rule: str) -> Conv[str]:
    compiled = re.compile(pattern)

    def convert(at: _At) -> str:
        text = _text(at)
        if not compiled.fullmatch(text):
            raise _Invalid(f"{_show(text)} is not valid: {rule}")
        return text

    return convert


def _choice(kind: type[E]) -> Conv[E]:
    """One of an enum's values, case-insensitive; YAML 1.1's `off` (a bool) still reads as 'off'."""
    allowed = [member.value for member in kind]

    def convert(at: _At) -> E:
        text = _text(at).lower()
        if text not in allowed:
            hint = _did_you_mean(text, allowed) or f"; expected one of {', '.join(allowed)}"
            raise _Invalid(f"{_show(text)} is not allowed here{hint}")
        return kind(text)

    return convert


def _boolean(at: _At) -> bool:
    node = _scalar(at, "true or false")
    if node.tag != _BOOL:
        quoted = " (without quotes)" if node.style in ("'", '"') else ""
        raise _Invalid(f"expected true or false{quoted}, got {_show(node.value)}")
    return _YAML.construct_yaml_bool(node)


def _yaml_number(at: _At, tags: tuple[str, ...], expected: str) -> float:
    node = _scalar(at, expected)
    text = str(node.value)
    if re.fullmatch(r"[-+]?0[0-9_]+", text):
        raise _Invalid(f"write {text} without the leading 0: YAML reads it as an octal number")
    construct = _YAML.construct_yaml_float if node.tag == _FLOAT else _YAML.construct_yaml_int
    try:
        value = float(construct(node)) if node.tag in tags else math.nan
    except (ValueError, IndexError, OverflowError):  # an explicit tag on bad text: !!int abc
        value = math.nan
    if math.isfinite(value):
        return value
    raise _Invalid(f"expected {expected}, got {_show(text)}")


def _in_range(value: float, lo: float, hi: float | None, *, lo_open: bool = False) -> None:
    if (value > lo if lo_open else value >= lo) and (hi is None or value <= hi):
        return
    if hi is not None:
        raise _Invalid(f"must be from {lo:g} to {hi:g}, got {value:g}")
    raise _Invalid(f"must be {'more than' if lo_open else 'at least'} {lo:g}, got {value:g}")


def _integer(lo: int, hi: int | None = None) -> Conv[int]:
    def convert(at: _At) -> int:
        value = _yaml_number(at, (_INT,), "an integer")
        _in_range(value, lo, hi)
        return int(value)

    return convert


def _number(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Conv[float]:
    def convert(at: _At) -> float:
        value = _yaml_number(at, (_INT, _FLOAT), "a number")
        _in_range(value, lo, hi, lo_open=lo_open)
        return value

    return convert


def _path(*, must_exist: bool) -> Conv[Path]:
    """A path, relative ones resolved against the config file's directory."""

    def convert(at: _At) -> Path:
        path = at.ctx.base_dir / _text(at)
        mode = _stat_mode(path) if must_exist else None
        if must_exist and mode is None:
            raise _Invalid(f"file not found: {path}")
        if mode is not None and not stat.S_ISREG(mode):
            raise _Invalid(f"not a regular file: {path}")
        return path

    return convert


def _stat_mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None


# BCM number of each GPIO on the 40-pin header, by header position: for hints when someone counts
# header pins instead of GPIO numbers.
_HEADER_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10,
    21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}  # fmt: skip
_GPIO_NAME = re.compile(r"(?:gpio|bcm)?\s*(\d{1,3})", re.IGNORECASE)
_HEADER_NAME = re.compile(r"(?:board|pin|p1-?)\s*(\d{1,3})", re.IGNORECASE)


def _pin(at: _At) -> int:
    """A BCM GPIO number; 17, "GPIO17" and "BCM17" are the same wire.

    Read from the text as written, so 017 is 17 as the technician meant (not YAML 1.1's octal 15).
    """
    text = str(_scalar(at, "a GPIO number").value).strip()
    if header := _HEADER_NAME.fullmatch(text):
        bcm = _HEADER_TO_BCM.get(int(header[1]))
        hint = "power or ground, not a GPIO" if bcm is None else f"GPIO {bcm}: write {bcm}"
        raise _Invalid(f"use BCM GPIO numbers, not header pins ({text} is {hint})")
    named = _GPIO_NAME.fullmatch(text)
    number = int(named[1]) if named else _integer(0)(at)
    if number in (0, 1):
        raise _Invalid(
            f"GPIO {number} is reserved for the HAT ID EEPROM (ID_SD/ID_SC): use GPIO 2 to 27"
        )
    if number > 27:
        bcm = _HEADER_TO_BCM.get(number)
        hint = "" if bcm is None else f" (header pin {number} is GPIO {bcm})"
        raise _Invalid(f"GPIO {number} is not on the 40-pin header: use BCM GPIO 2 to 27{hint}")
    return number


def _size(at: _At) -> tuple[int, int]:
    text = _text(at)
    match = re.fullmatch(r"(\d{1,5})\s*[xX]\s*(\d{1,5})", text)
    if not match:
        raise _Invalid(f"expected WIDTHxHEIGHT such as 640x360, got {_show(text)}")
    width, height = int(match[1]), int(match[2])
    if not all(2 <= side <= 4096 and side % 2 == 0 for side in (width, height)):
        raise _Invalid(f"{width}x{height}: width and height must be even, from 2 to 4096")
    return width, height


_NETWORK = re.compile(r"//(?:.*@)?[^\s/?#:@]+(?::\d{1,5})?(?:[/?#].*)?", re.DOTALL)
_SOURCE_FORMS = {  # scheme -> (what follows the ':', how to write it)
    "rtsp": (_NETWORK, "rtsp://[user:password@]host[:port]/path"),
    "rtsps": (_NETWORK, "rtsps://[user:password@]host[:port]/path"),
    "v4l2": (re.compile(r"///dev/\S+"), "v4l2:///dev/video0"),
    "picamera2": (re.compile(r"\d"), "picamera2:0"),
    "file": (re.compile(r".+"), "file:///path/to/clip.mp4"),
    "synthetic": (re.compile(r".*"), "synthetic: or synthetic:NAME"),
}


def _camera_source(at: _At) -> str:
    """A camera source. Messages show it only through redact_url: passwords must not reach logs."""
    text = _text(at)
    scheme, _, rest = text.partition(":")
    form = _SOURCE_FORMS.get(scheme.lower())
    if form is None:
        schemes = ", ".join(f"{s}:" for s in _SOURCE_FORMS)
        raise _Invalid(f"unsupported camera source {redact_url(text)}: use {schemes}")
    if not form[0].fullmatch(rest):
        raise _Invalid(f"malformed camera source {redact_url(text)}: write {form[1]}")
    if scheme.lower() == "file":
        return f"file://{at.ctx.base_dir / rest.removeprefix('//')}"
    return text


def _camera_ref(at: _At) -> str:
    name = _text(at)
    known = at.ctx.camera_ids
    if name not in known:
        listed = f"; cameras defined: {', '.join(known)}" if known else "; no cameras are defined"
        raise _Invalid(f"unknown camera {name!r}{_did_you_mean(name, known) or listed}")
    return name


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    address = _ip(host)
    return host.lower() == "localhost" or (address is not None and address.is_loopback)


def _list_of(conv: Conv[T]) -> Conv[tuple[T, ...]]:
    def convert(at: _At) -> tuple[T, ...]:
        if not isinstance(at.node, yaml.SequenceNode):
            raise _Invalid(f"expected a list such as [a, b], got {_describe(at.node)}")
        nodes = enumerate(at.node.value)
        items = [_convert(conv, _At(node, f"{at.path}[{i}]", at.ctx)) for i, node in nodes]
        good = tuple(item for item in items if item is not None)
        if len(good) != len(items):
            raise _Invalid()
        return good

    return convert


def _section(build: Callable[[_Map], T | None]) -> Conv[T]:
    def convert(at: _At) -> T:
        reader = _Map(at)
        result = build(reader)
        reader.close()
        if result is None:
            raise _Invalid()
        return result

    return convert


# --------------------------------------------------------------------------------------------------
# The schema: one builder per section. See docs/configuration.md for the why of each rule.

_ID_RULE = "lower-case letters, digits, '_' and '-', starting with a letter or digit"
_SITE_ID = _matching(SITE_ID.pattern, "lower-case letters, digits and '-', starting"
                     " with a letter or digit, at most 63 characters (it goes into MQTT topics)")
_HOST = _matching(r"[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*", "write a host name or IP"
                  " address only, without mqtt:// or :port (the port goes in mqtt.port)")
_ITEM_ID = _matching(ITEM_ID.pattern, _ID_RULE)


def _label(at: _At) -> str:
    """A location or a site's name: any script, at most MAX_LABEL_CHARS, nothing invisible. It
    goes into every alarm, and the centre refuses an alarm that breaks these rules
    (docs/protocol.md), so a box must never be able to send one."""
    text = _text(at)
    if len(text) > MAX_LABEL_CHARS:
        raise _Invalid(f"at most {MAX_LABEL_CHARS} characters, got {len(text)}")
    bad = UNSAFE_CHARS.search(text)
    if bad:
        raise _Invalid(f"contains the invisible or control character U+{ord(bad.group()):04X} "
                       f"at position {bad.start() + 1}: retype the text")
    return text
_TOPIC_PREFIX = _matching(r"[a-z0-9][a-z0-9_-]*(?:/[a-z0-9_-]+)*", f"{_ID_RULE}, and single '/'"
                          " between levels such as police/schools (no '+', '#' or outer '/')")


def _site(m: _Map) -> SiteConfig | None:
    site_id = m.req("id", _SITE_ID)
    name = m.opt("name", _label)
    return None if site_id is None else SiteConfig(site_id, name or site_id)


_TLS_KEYS = ("ca_file", "cert_file", "key_file")


def _tls(m: _Map) -> TlsConfig:
    ca_file, cert_file, key_file = (m.opt(k, _path(must_exist=True)) for k in _TLS_KEYS)
    if m.present("cert_file") != m.present("key_file"):
        missing = "key_file" if m.present("cert_file") else "cert_file"
        m.problem(missing, "cert_file and key_file go together: set both, or neither")
    return TlsConfig(ca_file, cert_file, key_file)


def _mqtt(m: _Map, site_id: str) -> MqttConfig | None:
    host = m.req("host", _HOST)
    tls = m.opt("tls", _section(_tls))
    tls_on = m.present("tls")  # not `tls is not None`: a broken tls block must not look plaintext
    port = m.get("port", _integer(1, 65535), 8883 if tls_on else 1883)
    topic_prefix = m.get("topic_prefix", _TOPIC_PREFIX, "schools")
    keepalive_s = m.get("keepalive_s", _integer(5, 300), 10)
    client_id = m.get("client_id", _text, f"edge-agent-{site_id}")
    username = m.opt("username", _text)
    password_file = m.opt("password_file", _path(must_exist=True))
    allow_plaintext = m.get("allow_plaintext", _boolean, False)
    if m.present("password_file") and not m.present("username"):
        m.problem("password_file", "a password needs a username: set mqtt.username too")
    if host is not None and not (tls_on or allow_plaintext or _is_loopback(host)):
        m.problem("host", f"plain-text MQTT to {host} would send alarms unencrypted: add a tls:"
                  " block (tls: {} trusts the system CAs), or set allow_plaintext: true if the"
                  " link is protected otherwise (VPN)")
    if host is None:
        return None
    return MqttConfig(host, port, topic_prefix, keepalive_s, client_id, tls, username,
                      password_file, allow_plaintext)


def _gpio(m: _Map) -> GpioConfig:
    return GpioConfig(m.get("backend", _choice(GpioBackend), GpioConfig().backend))


def _live(m: _Map) -> LiveConfig:
    return LiveConfig(m.get("mode", _choice(LiveMode), LiveConfig().mode),
                      m.opt("source", _camera_source))


def _camera(m: _Map) -> CameraConfig | None:
    camera_id = m.req("id", _ITEM_ID)
    source = m.req("source", _camera_source)
    segment_s = m.get("segment_s", _number(0.5, 10), 2.0)
    pre_alarm_s = m.get("pre_alarm_s", _number(0, 300), 30.0)
    post_alarm_s = m.get("post_alarm_s", _number(0, 600), 30.0)
    width, height = m.get("size", _size, (640, 360))
    fps = m.get("fps", _integer(1, 60), 15)
    bitrate_kbps = m.get("bitrate_kbps", _integer(50, 20000), 1000)
    live = m.get("live", _section(_live), LiveConfig())
    if camera_id is None:
        return None
    m.claim("id", f"camera id {camera_id!r}", m.at.path)
    m.at.ctx.camera_ids.append(camera_id)  # even when its source is bad: no echo errors in buttons
    if source is None:
        return None
    return CameraConfig(camera_id, source, segment_s, pre_alarm_s, post_alarm_s, width, height,
                        fps, bitrate_kbps, live)


def _button(m: _Map) -> ButtonConfig | None:
    button_id = m.req("id", _ITEM_ID)
    pin = m.req("pin", _pin)
    location = m.req("location", _label)
    wiring = m.get("wiring", _choice(Wiring), Wiring.NORMALLY_OPEN)
    hold_s = m.get("hold_s", _number(0, 10), 0.0)
    cameras = m.opt("cameras", _list_of(_camera_ref))
    if button_id is not None:
        m.claim("id", f"button id {button_id!r}", m.at.path)
    if pin is not None:
        m.claim("pin", f"GPIO {pin}", f"{m.at.path} ({button_id or 'no id'})")
    if button_id is None or pin is None or location is None:
        return None
    return ButtonConfig(button_id, pin, location, wiring, hold_s, cameras)


def _storage(m: _Map) -> StorageConfig:
    default = StorageConfig()
    return StorageConfig(m.get("path", _path(must_exist=False), default.path),
                         m.get("max_gb", _number(0, lo_open=True), default.max_gb))


def _recording(m: _Map) -> RecordingConfig:
    mode = m.get("mode", _choice(RecordingMode), RecordingConfig().mode)
    path = m.opt("path", _path(must_exist=False))
    max_gb = m.opt("max_gb", _number(0, lo_open=True))
    retention_h = m.get("retention_h", _number(0, lo_open=True), RecordingConfig().retention_h)
    for key in ("path", "max_gb"):
        if mode is RecordingMode.CONTINUOUS and not m.present(key):
            m.problem(key, "required when recording.mode is continuous")
    return RecordingConfig(mode, path, max_gb, retention_h)


def _uplink(m: _Map) -> UplinkConfig:
    return UplinkConfig(m.opt("max_kbps", _integer(1)),
                        m.get("auto_rate", _boolean, UplinkConfig().auto_rate))


def _indicators(m: _Map) -> IndicatorsConfig:
    led_pin = m.opt("led_pin", _pin)
    buzzer_pin = m.opt("buzzer_pin", _pin)
    ack_timeout_s = m.get("ack_timeout_s", _number(0, 86400, lo_open=True),
                          IndicatorsConfig().ack_timeout_s)
    for key, pin in (("led_pin", led_pin), ("buzzer_pin", buzzer_pin)):
        if pin is not None:
            m.claim(key, f"GPIO {pin}", f"indicators.{key}")
    return IndicatorsConfig(led_pin, buzzer_pin, ack_timeout_s)


def _commands(m: _Map) -> CommandsConfig:
    return CommandsConfig(m.opt("public_key_file", _path(must_exist=True)))


def _log(m: _Map) -> LogConfig:
    return LogConfig(m.get("level", _choice(LogLevel), LogConfig().level))


def _root(m: _Map, origin: Path | None) -> Config | None:
    """Sections are read in dependency order, whatever their order in the file: cameras before the
    buttons that name them, buttons before the indicators that must not take their pins."""
    site = m.req("site", _section(_site))
    mqtt = m.req("mqtt", _section(lambda mm: _mqtt(mm, site.id if site else "unknown")))
    gpio = m.get("gpio", _section(_gpio), GpioConfig())
    cameras = m.opt("cameras", _list_of(_section(_camera))) or ()
    buttons = m.req("buttons", _list_of(_section(_button)))
    if buttons == ():
        m.problem("buttons", "at least one button is required: without one no alarm can be raised")
    storage = m.get("storage", _section(_storage), StorageConfig())
    recording = m.get("recording", _section(_recording), RecordingConfig())
    uplink = m.get("uplink", _section(_uplink), UplinkConfig())
    indicators = m.get("indicators", _section(_indicators), IndicatorsConfig())
    commands = m.get("commands", _section(_commands), CommandsConfig())
    log = m.get("log", _section(_log), LogConfig())
    if site is None or mqtt is None or buttons is None:
        return None
    return Config(site, mqtt, gpio, buttons, cameras, storage, recording, uplink, indicators,
                  commands, log, origin)


# --------------------------------------------------------------------------------------------------
# From text to Config.


def _parse(text: str, source: str, base_dir: Path, origin: Path | None) -> Config:
    ctx = _Ctx(source, base_dir)
    root = _compose(text, ctx)
    config = None
    if root is not None:
        config = _convert(_section(lambda m: _root(m, origin)), _At(root, "", ctx))
    if config is None or ctx.problems:
        raise ConfigError([*sorted(ctx.problems, key=lambda p: p.line or 0)])
    return config


def _compose(text: str, ctx: _Ctx) -> yaml.Node | None:
    """The node tree, or None with the reason reported (syntax, empty, not a mapping)."""
    def fail(line: int | None, message: str) -> None:
        ctx.problems.append(Problem(ctx.source, line, "", message))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        fail(mark.line + 1 if mark else None, _syntax_message(err))
        return None
    except yaml.reader.ReaderError as err:
        fail(text.count("\n", 0, err.position) + 1,
             f"character #x{err.character:04x} is not allowed in YAML: remove it")
        return None
    except RecursionError:
        fail(None, "nested too deeply to be a configuration file")
        return None
    if root is None or _is_null(root):
        fail(None, "the file is empty: start from agent.example.yaml")
    elif not isinstance(root, yaml.MappingNode):
        fail(_line(root), "the top level must be sections such as site:, mqtt: and buttons:,"
             f" got {_describe(root)}")
    else:
        return root
    return None


def _syntax_message(err: yaml.MarkedYAMLError) -> str:
    """PyYAML's own words, without its snippet of the line: that could hold a camera password."""
    words = "YAML syntax error: " + ", ".join(w for w in (err.context, err.problem) if w)
    if "\\t" in words:
        words += ": indent with spaces, not tabs"
    return words


def _unreadable(err: OSError | ValueError) -> str:
    if isinstance(err, FileNotFoundError):
        return "file not found (start from agent.example.yaml)"
    if isinstance(err, PermissionError):
        return "permission denied: run as the agent's user, or with sudo"
    if isinstance(err, OSError) and err.strerror:
        return f"cannot read the file: {err.strerror}"
    return f"cannot read the file: {err}"
