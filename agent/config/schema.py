"""The schema: one builder per section, reading its keys through ``Map``, so the whole contract
lives here (docs/configuration.md is its reference for people).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from agent.config.converters import (
    HOST_PATTERN,
    as_boolean,
    as_choice,
    as_integer,
    as_list_of,
    as_number,
    as_path,
    as_scalar,
    as_section,
    as_text,
    matching,
)
from agent.config.dc09 import dc09_section
from agent.config.model import (
    ButtonConfig,
    CameraConfig,
    CommandsConfig,
    Config,
    GpioBackend,
    GpioConfig,
    IndicatorsConfig,
    LiveConfig,
    LiveMode,
    LogConfig,
    LogLevel,
    MqttConfig,
    RecordingConfig,
    RecordingMode,
    SiteConfig,
    StorageConfig,
    TlsConfig,
    UplinkConfig,
    Wiring,
)
from agent.config.reader import At, Ctx, Invalid, Map, converted, did_you_mean, show
from agent.config.yamlfile import compose
from agent.delivery.dc09.events import MAX_ZONE
from agent.delivery.protocol import ITEM_ID, MAX_LABEL_CHARS, SITE_ID
from agent.errors import ConfigError
from agent.logs import UNSAFE_CHARS
from agent.logs import redact as redact_url

# BCM number of each GPIO on the 40-pin header, by header position: for hints when someone counts
# header pins instead of GPIO numbers.
_HEADER_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10,
    21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}  # fmt: skip
_GPIO_NAME = re.compile(r"(?:gpio|bcm)?\s*(\d{1,3})", re.IGNORECASE)
_HEADER_NAME = re.compile(r"(?:board|pin|p1-?)\s*(\d{1,3})", re.IGNORECASE)


def _pin(at: At) -> int:
    """A BCM GPIO number; 17, "GPIO17" and "BCM17" are the same wire.

    Read from the text as written, so 017 is 17 as the technician meant (not YAML 1.1's octal 15).
    """
    text = str(as_scalar(at, "a GPIO number").value).strip()
    if header := _HEADER_NAME.fullmatch(text):
        bcm = _HEADER_TO_BCM.get(int(header[1]))
        hint = "power or ground, not a GPIO" if bcm is None else f"GPIO {bcm}: write {bcm}"
        raise Invalid(f"use BCM GPIO numbers, not header pins ({text} is {hint})")
    named = _GPIO_NAME.fullmatch(text)
    number = int(named[1]) if named else as_integer(0)(at)
    if number in (0, 1):
        raise Invalid(
            f"GPIO {number} is reserved for the HAT ID EEPROM (ID_SD/ID_SC): use GPIO 2 to 27"
        )
    if number > 27:
        bcm = _HEADER_TO_BCM.get(number)
        hint = "" if bcm is None else f" (header pin {number} is GPIO {bcm})"
        raise Invalid(f"GPIO {number} is not on the 40-pin header: use BCM GPIO 2 to 27{hint}")
    return number


def _size(at: At) -> tuple[int, int]:
    text = as_text(at)
    match = re.fullmatch(r"(\d{1,5})\s*[xX]\s*(\d{1,5})", text)
    if not match:
        raise Invalid(f"expected WIDTHxHEIGHT such as 640x360, got {show(text)}")
    width, height = int(match[1]), int(match[2])
    if not all(2 <= side <= 4096 and side % 2 == 0 for side in (width, height)):
        raise Invalid(f"{width}x{height}: width and height must be even, from 2 to 4096")
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


def _camera_source(at: At) -> str:
    """A camera source. Messages show it only through redact_url: passwords must not reach logs."""
    text = as_text(at)
    scheme, _, rest = text.partition(":")
    form = _SOURCE_FORMS.get(scheme.lower())
    if form is None:
        schemes = ", ".join(f"{s}:" for s in _SOURCE_FORMS)
        raise Invalid(f"unsupported camera source {redact_url(text)}: use {schemes}")
    if not form[0].fullmatch(rest):
        raise Invalid(f"malformed camera source {redact_url(text)}: write {form[1]}")
    if scheme.lower() == "file":
        return f"file://{at.ctx.base_dir / rest.removeprefix('//')}"
    return text


def _camera_ref(at: At) -> str:
    name = as_text(at)
    known = at.ctx.camera_ids
    if name not in known:
        listed = f"; cameras defined: {', '.join(known)}" if known else "; no cameras are defined"
        raise Invalid(f"unknown camera {name!r}{did_you_mean(name, known) or listed}")
    return name


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    address = _ip(host)
    return host.lower() == "localhost" or (address is not None and address.is_loopback)


# --------------------------------------------------------------------------------------------------
# The schema: one builder per section. See docs/configuration.md for the why of each rule.

_ID_RULE = "lower-case letters, digits, '_' and '-', starting with a letter or digit"
_SITE_ID = matching(
    SITE_ID.pattern,
    "lower-case letters, digits and '-', starting"
    " with a letter or digit, at most 63 characters (it goes into MQTT topics)",
)
_HOST = matching(
    HOST_PATTERN,
    "write a host name or IP address only, without mqtt:// or :port (the port goes in mqtt.port)",
)
_ITEM_ID = matching(ITEM_ID.pattern, _ID_RULE)


def _label(at: At) -> str:
    """A location or a site's name: any script, at most MAX_LABEL_CHARS, nothing invisible. It
    goes into every alarm, and the centre refuses an alarm that breaks these rules
    (docs/protocol.md), so a box must never be able to send one."""
    text = as_text(at)
    if len(text) > MAX_LABEL_CHARS:
        raise Invalid(f"at most {MAX_LABEL_CHARS} characters, got {len(text)}")
    bad = UNSAFE_CHARS.search(text)
    if bad:
        raise Invalid(
            f"contains the invisible or control character U+{ord(bad.group()):04X} "
            f"at position {bad.start() + 1}: retype the text"
        )
    return text


_TOPIC_PREFIX = matching(
    r"[a-z0-9][a-z0-9_-]*(?:/[a-z0-9_-]+)*",
    f"{_ID_RULE}, and single '/' between levels such as police/schools (no '+', '#' or outer '/')",
)


def _site(m: Map) -> SiteConfig | None:
    site_id = m.req("id", _SITE_ID)
    name = m.opt("name", _label)
    return None if site_id is None else SiteConfig(site_id, name or site_id)


_TLS_KEYS = ("ca_file", "cert_file", "key_file")


def _tls(m: Map) -> TlsConfig:
    ca_file, cert_file, key_file = (m.opt(k, as_path(must_exist=True)) for k in _TLS_KEYS)
    if m.present("cert_file") != m.present("key_file"):
        missing = "key_file" if m.present("cert_file") else "cert_file"
        m.problem(missing, "cert_file and key_file go together: set both, or neither")
    return TlsConfig(ca_file, cert_file, key_file)


def _mqtt(m: Map, site_id: str) -> MqttConfig | None:
    host = m.req("host", _HOST)
    tls = m.opt("tls", as_section(_tls))
    tls_on = m.present("tls")  # not `tls is not None`: a broken tls block must not look plaintext
    port = m.get("port", as_integer(1, 65535), 8883 if tls_on else 1883)
    topic_prefix = m.get("topic_prefix", _TOPIC_PREFIX, "schools")
    keepalive_s = m.get("keepalive_s", as_integer(5, 300), 10)
    client_id = m.get("client_id", as_text, f"edge-agent-{site_id}")
    username = m.opt("username", as_text)
    password_file = m.opt("password_file", as_path(must_exist=True))
    allow_plaintext = m.get("allow_plaintext", as_boolean, False)
    if m.present("password_file") and not m.present("username"):
        m.problem("password_file", "a password needs a username: set mqtt.username too")
    if host is not None and not (tls_on or allow_plaintext or _is_loopback(host)):
        m.problem(
            "host",
            f"plain-text MQTT to {host} would send alarms unencrypted: add a tls:"
            " block (tls: {} trusts the system CAs), or set allow_plaintext: true if the"
            " link is protected otherwise (VPN)",
        )
    if host is None:
        return None
    return MqttConfig(
        host,
        port,
        topic_prefix,
        keepalive_s,
        client_id,
        tls,
        username,
        password_file,
        allow_plaintext,
    )


def _gpio(m: Map) -> GpioConfig:
    return GpioConfig(m.get("backend", as_choice(GpioBackend), GpioConfig().backend))


def _live(m: Map) -> LiveConfig:
    return LiveConfig(
        m.get("mode", as_choice(LiveMode), LiveConfig().mode), m.opt("source", _camera_source)
    )


def _camera(m: Map) -> CameraConfig | None:
    camera_id = m.req("id", _ITEM_ID)
    source = m.req("source", _camera_source)
    segment_s = m.get("segment_s", as_number(0.5, 10), 2.0)
    pre_alarm_s = m.get("pre_alarm_s", as_number(0, 300), 30.0)
    post_alarm_s = m.get("post_alarm_s", as_number(0, 600), 30.0)
    width, height = m.get("size", _size, (640, 360))
    fps = m.get("fps", as_integer(1, 60), 15)
    bitrate_kbps = m.get("bitrate_kbps", as_integer(50, 20000), 1000)
    live = m.get("live", as_section(_live), LiveConfig())
    if camera_id is None:
        return None
    m.claim("id", f"camera id {camera_id!r}", m.at.path)
    m.at.ctx.camera_ids.append(camera_id)  # even when its source is bad: no echo errors in buttons
    if source is None:
        return None
    return CameraConfig(
        camera_id,
        source,
        segment_s,
        pre_alarm_s,
        post_alarm_s,
        width,
        height,
        fps,
        bitrate_kbps,
        live,
    )


def _button(m: Map, zones: bool) -> ButtonConfig | None:
    """``zones``: the config has a dc09 section, so each button needs its zone number."""
    button_id = m.req("id", _ITEM_ID)
    pin = m.req("pin", _pin)
    location = m.req("location", _label)
    wiring = m.get("wiring", as_choice(Wiring), Wiring.NORMALLY_OPEN)
    hold_s = m.get("hold_s", as_number(0, 10), 0.0)
    cameras = m.opt("cameras", as_list_of(_camera_ref))
    number = m.opt("number", as_integer(1, MAX_ZONE))
    holdup = m.get("holdup", as_boolean, False)
    if button_id is not None:
        m.claim("id", f"button id {button_id!r}", m.at.path)
    if pin is not None:
        m.claim("pin", f"GPIO {pin}", f"{m.at.path} ({button_id or 'no id'})")
    if number is not None:
        m.claim("number", f"zone number {number}", f"{m.at.path} ({button_id or 'no id'})")
    elif zones and not m.present("number"):
        m.problem(
            "number",
            f"required with a dc09 section: the button's zone (1-{MAX_ZONE}) "
            "as the centre's receiver knows it",
        )
    if button_id is None or pin is None or location is None:
        return None
    return ButtonConfig(button_id, pin, location, wiring, hold_s, cameras, number, holdup)


def _storage(m: Map) -> StorageConfig:
    default = StorageConfig()
    return StorageConfig(
        m.get("path", as_path(must_exist=False), default.path),
        m.get("max_gb", as_number(0, lo_open=True), default.max_gb),
    )


def _recording(m: Map) -> RecordingConfig:
    mode = m.get("mode", as_choice(RecordingMode), RecordingConfig().mode)
    path = m.opt("path", as_path(must_exist=False))
    max_gb = m.opt("max_gb", as_number(0, lo_open=True))
    retention_h = m.get("retention_h", as_number(0, lo_open=True), RecordingConfig().retention_h)
    for key in ("path", "max_gb"):
        if mode is RecordingMode.CONTINUOUS and not m.present(key):
            m.problem(key, "required when recording.mode is continuous")
    return RecordingConfig(mode, path, max_gb, retention_h)


def _uplink(m: Map) -> UplinkConfig:
    return UplinkConfig(
        m.opt("max_kbps", as_integer(1)), m.get("auto_rate", as_boolean, UplinkConfig().auto_rate)
    )


def _indicators(m: Map) -> IndicatorsConfig:
    led_pin = m.opt("led_pin", _pin)
    buzzer_pin = m.opt("buzzer_pin", _pin)
    ack_timeout_s = m.get(
        "ack_timeout_s", as_number(0, 86400, lo_open=True), IndicatorsConfig().ack_timeout_s
    )
    for key, pin in (("led_pin", led_pin), ("buzzer_pin", buzzer_pin)):
        if pin is not None:
            m.claim(key, f"GPIO {pin}", f"indicators.{key}")
    return IndicatorsConfig(led_pin, buzzer_pin, ack_timeout_s)


def _commands(m: Map) -> CommandsConfig:
    return CommandsConfig(m.opt("public_key_file", as_path(must_exist=True)))


def _log(m: Map) -> LogConfig:
    return LogConfig(m.get("level", as_choice(LogLevel), LogConfig().level))


def _root(m: Map, origin: Path | None) -> Config | None:
    """Sections are read in dependency order, whatever their order in the file: cameras before the
    buttons that name them, buttons before the indicators that must not take their pins."""
    site = m.req("site", as_section(_site))
    mqtt = m.req("mqtt", as_section(lambda mm: _mqtt(mm, site.id if site else "unknown")))
    gpio = m.get("gpio", as_section(_gpio), GpioConfig())
    cameras = m.opt("cameras", as_list_of(as_section(_camera))) or ()
    zones = m.present("dc09")
    buttons = m.req("buttons", as_list_of(as_section(lambda mm: _button(mm, zones))))
    if buttons == ():
        m.problem("buttons", "at least one button is required: without one no alarm can be raised")
    storage = m.get("storage", as_section(_storage), StorageConfig())
    recording = m.get("recording", as_section(_recording), RecordingConfig())
    uplink = m.get("uplink", as_section(_uplink), UplinkConfig())
    indicators = m.get("indicators", as_section(_indicators), IndicatorsConfig())
    commands = m.get("commands", as_section(_commands), CommandsConfig())
    log = m.get("log", as_section(_log), LogConfig())
    dc09 = m.opt("dc09", as_section(dc09_section))
    if site is None or mqtt is None or buttons is None:
        return None
    return Config(
        site,
        mqtt,
        gpio,
        buttons,
        cameras,
        storage,
        recording,
        uplink,
        indicators,
        commands,
        log,
        dc09=dc09,
        source=origin,
    )


def parse(text: str, source: str, base_dir: Path, origin: Path | None) -> Config:
    ctx = Ctx(source, base_dir)
    root = compose(text, ctx)
    config = None
    if root is not None:
        config = converted(as_section(lambda m: _root(m, origin)), At(root, "", ctx))
    if config is None or ctx.problems:
        raise ConfigError([*sorted(ctx.problems, key=lambda p: p.line or 0)])
    return config
