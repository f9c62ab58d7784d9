"""The configuration as the rest of the agent receives it: frozen, typed, already valid.

Defaults of the always-optional sections live on their dataclasses; defaults of sections with
required keys live in their builders (schema.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from agent.delivery.dc09.settings import Settings as Dc09Settings

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
    """`cameras` None means every camera: a new camera then needs no edit of each button.
    `number` is the button's zone on DC-09 (1-999, unique; required with a dc09 section);
    `holdup` marks a hold-up (duress) button, which DC-09 reports as such."""

    id: str
    pin: int
    location: str
    wiring: Wiring
    hold_s: float
    cameras: tuple[str, ...] | None
    number: int | None = None
    holdup: bool = False


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
class Dc09Config:
    """The DC-09 path: its settings, valid by construction (agent/delivery/dc09/settings.py),
    and the AES key files they were read from (config_warnings checks who may read them)."""

    settings: Dc09Settings
    key_files: tuple[Path, ...] = ()


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
    dc09: Dc09Config | None = None  # None: no DC-09 path
    source: Path | None = None

    def button(self, button_id: str) -> ButtonConfig:
        return by_id(self.buttons, button_id)

    def camera(self, camera_id: str) -> CameraConfig:
        return by_id(self.cameras, camera_id)

    def cameras_for(self, button_id: str) -> tuple[CameraConfig, ...]:
        """The cameras whose footage goes with this button's alarm, the default 'all' resolved."""
        wanted = self.button(button_id).cameras
        return self.cameras if wanted is None else tuple(self.camera(c) for c in wanted)


def by_id(items: tuple[Item, ...], wanted: str) -> Item:
    for item in items:
        if item.id == wanted:
            return item
    raise KeyError(f"no {wanted!r} in the configuration")
