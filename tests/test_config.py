"""The config file as a contract: what passes, what fails, and what the technician reads."""

from __future__ import annotations

import dataclasses
import os
import string
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import (
    config_warnings,
    default_config_text,
    format_report,
    load_config,
    parse_config,
    redact_url,
)
from agent.config.model import (
    ButtonConfig,
    Config,
    GpioBackend,
    LiveMode,
    Problem,
    RecordingMode,
    TlsConfig,
    UplinkConfig,
    Wiring,
)
from agent.errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"
BAD = sorted((CONFIGS / "bad").glob("*.yaml"))
EXPECTED: dict[str, list[dict[str, Any]]] = yaml.safe_load(
    (CONFIGS / "bad-expected.yaml").read_text(encoding="utf-8")
)

MINIMAL = """\
site:
  id: school-042
mqtt:
  host: 127.0.0.1
buttons:
  - id: entrance
    pin: 17
    location: Main entrance
"""


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "agent.yaml")
    assert all(isinstance(p, Problem) for p in caught.value.problems)
    return [p for p in caught.value.problems if isinstance(p, Problem)]


def only_problem(text: str) -> Problem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# --------------------------------------------------------------------------------------------------
# The corpus of technicians' mistakes.


def test_the_corpus_is_big_enough_and_every_file_has_expectations() -> None:
    assert len(BAD) >= 20
    assert sorted(p.name for p in BAD) == sorted(EXPECTED)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_each_bad_config_is_refused_at_the_right_key_and_line(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    report = format_report(caught.value)
    assert "Traceback" not in report
    assert report.splitlines()[-1].endswith(f"in {path}")
    for want in EXPECTED[path.name]:
        found = [
            p
            for p in problems
            if isinstance(p, Problem) and (p.path, p.line) == (want["path"], want["line"])
        ]
        assert found, f"no problem at {want['path']!r} line {want['line']}:\n{report}"
        assert any(want.get("contains", "") in p.message for p in found), report
        assert want.get("absent", "\0") not in report


def test_every_problem_in_a_file_is_reported_in_file_order() -> None:
    problems = problems_of("""\
site:
  id: School 42
mqtt:
  host: 127.0.0.1
  keepalive_s: 1
buttons:
  - id: entrance
    pin: 40
    location: Main entrance
  - id: entrance
    pin: 17
    location: Gym
    wiring: normal
log:
  levle: debug
""")
    assert [(p.line, p.path) for p in problems] == [
        (2, "site.id"),
        (5, "mqtt.keepalive_s"),
        (8, "buttons[0].pin"),
        (10, "buttons[1].id"),
        (13, "buttons[1].wiring"),
        (15, "log.levle"),
    ]


def test_problem_prints_as_a_line_an_editor_can_jump_to() -> None:
    problem = Problem("agent.yaml", 14, "buttons[1].pin", "GPIO 17 is already used")
    assert str(problem) == "agent.yaml:14: buttons[1].pin: GPIO 17 is already used"
    assert str(Problem("agent.yaml", None, "", "file not found")) == "agent.yaml: file not found"


def test_format_report_lists_problems_then_counts_them() -> None:
    err = ConfigError([Problem("a.yaml", 3, "site.id", "bad"), Problem("a.yaml", 9, "log", "x")])
    assert format_report(err).splitlines() == [
        "a.yaml:3: site.id: bad",
        "a.yaml:9: log: x",
        "2 problems in a.yaml",
    ]
    one = ConfigError([Problem("a.yaml", 3, "p", "m")])
    assert format_report(one).endswith("1 problem in a.yaml")


# --------------------------------------------------------------------------------------------------
# Reading files.


def test_unreadable_inputs_are_config_errors_not_tracebacks(tmp_path: Path) -> None:
    cases: list[tuple[str | Path, str]] = [
        (tmp_path / "missing.yaml", "file not found"),
        (tmp_path, "cannot read"),
        ("bad\0name.yaml", "cannot read"),
    ]
    for path, words in cases:
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert words in format_report(caught.value)


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "agent.yaml"
    big.write_text("# " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="1 MiB"):
        load_config(big)


def test_a_byte_order_mark_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(path).site.id == "school-042"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", None, "empty"),
        ("# only a comment\n", None, "empty"),
        ("- a\n- b\n", 1, "got a list"),
        ("just text\n", 1, "got 'just text'"),
        ("site: [\n", 2, "YAML syntax error"),
        ("site:\n  id: a\n bad: indent\n", 3, "YAML syntax error"),
        ("a: *nowhere\n", 1, "undefined alias"),
        ("a: \x07\n", 1, "#x0007"),
        ("[" * 3000, None, "nested too deeply"),
    ],
)
def test_whole_file_problems(text: str, line: int | None, words: str) -> None:
    problem = only_problem(text)
    assert (problem.line, problem.path) == (line, "")
    assert words in problem.message


# --------------------------------------------------------------------------------------------------
# Keys and types.


def test_unknown_key_without_a_close_match_lists_the_allowed_keys() -> None:
    problem = only_problem(MINIMAL + "gpio:\n  driver: lgpio\n")
    assert problem.path == "gpio.driver"
    assert problem.message == "unknown key 'driver'; allowed: backend"


def test_duplicate_keys_are_refused_even_when_both_are_valid() -> None:
    problem = only_problem(MINIMAL + "log:\n  level: info\n  level: debug\n")
    assert (problem.line, problem.path) == (11, "log.level")


def test_merge_keys_are_refused_with_a_reason() -> None:
    text = MINIMAL + "cameras:\n  - &cam {id: a, source: 'synthetic:'}\n  - <<: *cam\n    id: b\n"
    merge, missing = problems_of(text)
    assert (merge.line, merge.path) == (11, "cameras[1].<<")
    assert "merge keys are not supported" in merge.message
    assert missing.path == "cameras[1].source"


def test_yaml_bool_words_are_text_where_text_is_expected() -> None:
    text = MINIMAL.replace("id: school-042", "id: school-042\n  name: no").replace(
        "location: Main entrance", "location: yes"
    )
    config = parse_config(text + "recording:\n  mode: off\n")
    assert config.site.name == "no"
    assert config.buttons[0].location == "yes"
    assert config.recording.mode is RecordingMode.OFF


def test_enums_ignore_case_and_pins_accept_gpio_names() -> None:
    text = MINIMAL.replace("pin: 17", "pin: BCM17\n    wiring: Normally_Closed")
    config = parse_config(text + "log: {level: INFO}\n")
    assert config.buttons[0].pin == 17
    assert config.buttons[0].wiring is Wiring.NORMALLY_CLOSED
    assert config.log.level == "info"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("'17'", None),
        ("017", None),
        ("GPIO 4", None),
        ("0", "HAT ID EEPROM"),
        ("28", "not on the 40-pin header"),
        ("-3", "at least 0"),
        ("17.5", "expected an integer, got '17.5'"),
        ("true", "expected an integer, got 'true'"),
        ("[17]", "expected a GPIO number, got a list"),
        ("pin 1", "power or ground"),
        ("!!int seventeen", "expected an integer"),
    ],
)
def test_pin_values(value: str, words: str | None) -> None:
    text = MINIMAL.replace("pin: 17", f"pin: {value}")
    if words is None:
        assert parse_config(text).buttons[0].pin in (4, 17)
    else:
        problem = only_problem(text)
        assert problem.path == "buttons[0].pin"
        assert words in problem.message


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("hold_s", "ten", "expected a number, got 'ten'"),
        ("hold_s", ".nan", "expected a number"),
        ("hold_s", "11", "from 0 to 10"),
        ("location", "''", "must not be empty"),
        ("location", "{a: 1}", "expected text, got a mapping"),
        ("cameras", "cam1", "expected a list such as [a, b], got 'cam1'"),
    ],
)
def test_button_value_types(key: str, value: str, words: str) -> None:
    button = {"location": "Main entrance", key: value}
    lines = "".join(f"    {k}: {v}\n" for k, v in button.items())
    problem = only_problem(MINIMAL.replace("    location: Main entrance\n", lines))
    assert problem.path == f"buttons[0].{key}"
    assert words in problem.message


# --------------------------------------------------------------------------------------------------
# Good configs.


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = parse_config(MINIMAL, base_dir=tmp_path)
    assert config.site.name == "school-042"
    assert (config.mqtt.port, config.mqtt.topic_prefix, config.mqtt.keepalive_s) == (
        1883,
        "schools",
        10,
    )
    assert config.mqtt.client_id == "edge-agent-school-042"
    assert not config.mqtt.tls_enabled
    assert config.gpio.backend is GpioBackend.AUTO
    assert config.buttons == (
        ButtonConfig("entrance", 17, "Main entrance", Wiring.NORMALLY_OPEN, 0.0, None),
    )
    assert config.cameras == ()
    assert config.storage.path == Path("/var/lib/edge-agent")
    assert config.storage.max_gb == 2.0
    assert config.recording.mode is RecordingMode.OFF
    assert config.uplink.max_kbps is None and config.uplink.auto_rate
    assert config.indicators.ack_timeout_s == 300.0
    assert config.commands.public_key_file is None
    assert config.source is None
    assert config_warnings(config) == []


def test_the_example_template_is_valid_and_documents_every_key() -> None:
    text = resources.files("agent").joinpath("data", "agent.example.yaml").read_text()
    config = parse_config(text, "agent.example.yaml")
    assert config.site.id == "school-042"
    assert config.mqtt.host == "127.0.0.1" and not config.mqtt.tls_enabled
    assert [b.id for b in config.buttons] == ["entrance", "office"]
    assert config.cameras_for("office") == config.cameras  # no list means every camera
    for key in [
        "tls:",
        "ca_file",
        "cert_file",
        "key_file",
        "username",
        "password_file",
        "client_id",
        "port",
        "retention_h",
        "live:",
        "source:",
    ]:
        assert key in text


def test_the_simulated_school(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_config(default_config_text(), "<simulated school>")
    assert (config.site.id, config.mqtt.host, config.mqtt.port) == ("sim-school", "127.0.0.1", 1883)
    assert config.gpio.backend is GpioBackend.MOCK
    assert [(b.id, b.wiring, b.hold_s) for b in config.buttons] == [
        ("entrance", Wiring.NORMALLY_OPEN, 0.0),
        ("gym", Wiring.NORMALLY_OPEN, 0.0),
        ("office", Wiring.NORMALLY_CLOSED, 0.0),
        ("corridor", Wiring.NORMALLY_OPEN, 0.5),
    ]
    for button in config.buttons:
        (camera,) = config.cameras_for(button.id)
        assert camera.kind == "synthetic"
        assert (camera.width, camera.height, camera.fps) == (320, 180, 10)
        assert (camera.segment_s, camera.pre_alarm_s, camera.post_alarm_s) == (1, 5, 5)
    assert config.storage.path == tmp_path / "sim-state"
    path = resources.files("agent").joinpath("data", "simulated-school.yaml")
    assert default_config_text() == path.read_text()


def test_a_full_tls_config_with_real_files(tmp_path: Path) -> None:
    for name in ["ca.crt", "client.crt", "client.key", "mqtt.pass", "centre.pub"]:
        (tmp_path / name).write_text("x\n")
    path = tmp_path / "agent.yaml"
    path.write_text(f"""\
site: {{id: school-042, name: "School No. 42"}}
mqtt:
  host: mqtt.police.example
  topic_prefix: police/schools
  client_id: school-042-pi
  tls: {{ca_file: ca.crt, cert_file: {tmp_path}/client.crt, key_file: client.key}}
  username: school-042
  password_file: mqtt.pass
gpio: {{backend: lgpio}}
buttons:
  - {{id: entrance, pin: 17, location: Main entrance, cameras: [door]}}
  - {{id: office, pin: 27, location: Office, wiring: normally_closed, hold_s: 1.5}}
cameras:
  - id: door
    source: rtsps://viewer:pw@10.0.0.5/stream1
    live: {{mode: always, source: "rtsps://viewer:pw@10.0.0.5/stream2"}}
  - {{id: hall, source: "file:clips/hall.mp4", size: 1280x720, fps: 25, bitrate_kbps: 2500}}
storage: {{path: state, max_gb: 0.5}}
recording: {{mode: continuous, path: /srv/rec, max_gb: 50}}
uplink: {{max_kbps: 800, auto_rate: false}}
indicators: {{led_pin: 24, buzzer_pin: 25, ack_timeout_s: 60}}
commands: {{public_key_file: centre.pub}}
log: {{level: debug}}
""")
    config = load_config(path)
    assert config.source == path
    assert config.mqtt.tls == TlsConfig(
        tmp_path / "ca.crt", tmp_path / "client.crt", tmp_path / "client.key"
    )
    assert config.mqtt.tls_enabled and config.mqtt.port == 8883
    assert config.mqtt.password_file == tmp_path / "mqtt.pass"
    assert config.mqtt.client_id == "school-042-pi"
    assert config.cameras_for("entrance") == (config.camera("door"),)
    assert config.cameras_for("office") == config.cameras
    assert config.camera("door").live_source.endswith("stream2")
    assert config.camera("door").live.mode is LiveMode.ALWAYS
    assert config.camera("hall").source == f"file://{tmp_path}/clips/hall.mp4"
    assert config.camera("hall").live_source == config.camera("hall").source
    assert config.storage.path == tmp_path / "state"
    assert (config.recording.path, config.recording.max_gb, config.recording.retention_h) == (
        Path("/srv/rec"),
        50,
        24,
    )
    assert config.indicators.led_pin == 24
    assert config.uplink == UplinkConfig(800, auto_rate=False)
    assert config.commands.public_key_file == tmp_path / "centre.pub"


def test_tls_block_alone_means_tls_with_the_system_cas() -> None:
    text = MINIMAL.replace("127.0.0.1", "mqtt.police.example\n  tls: {}")
    assert parse_config(text).mqtt.tls == TlsConfig()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.53", "::1"])
def test_plain_text_is_fine_on_loopback(host: str) -> None:
    assert parse_config(MINIMAL.replace("127.0.0.1", f"'{host}'")).mqtt.host == host


def test_allow_plaintext_opts_in_to_a_remote_plain_broker() -> None:
    text = MINIMAL.replace("127.0.0.1", "10.8.0.1\n  allow_plaintext: yes")
    assert parse_config(text).mqtt.allow_plaintext


def test_configs_are_frozen_and_replaceable(tmp_path: Path) -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mqtt.port = 1  # type: ignore[misc]
    changed = dataclasses.replace(
        config,
        mqtt=dataclasses.replace(config.mqtt, port=11883),
        storage=dataclasses.replace(config.storage, path=tmp_path),
    )
    assert (changed.mqtt.port, changed.storage.path, config.mqtt.port) == (11883, tmp_path, 1883)


def test_lookups_by_id() -> None:
    config = parse_config(MINIMAL)
    assert config.button("entrance").pin == 17
    with pytest.raises(KeyError):
        config.button("gym")
    with pytest.raises(KeyError):
        config.camera("door")


# --------------------------------------------------------------------------------------------------
# Secrets: redaction and file modes.


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("rtsp://user:pass@10.0.0.5/stream1", "rtsp://user:***@10.0.0.5/stream1"),
        ("rtsp://admin:p@ss/w0rd@cam:554/s", "rtsp://admin:***@cam:554/s"),
        ("rtsp://10.0.0.5/stream?user=a&password=x1", "rtsp://10.0.0.5/stream?user=a&password=***"),
        ("rtsp://10.0.0.5:554/stream1", "rtsp://10.0.0.5:554/stream1"),
        ("synthetic:", "synthetic:"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_a_password_in_the_wrong_place_is_still_not_echoed() -> None:
    problems = problems_of(
        MINIMAL.replace(
            "location: Main entrance", "location: {url: x}\n    hold_s: rtsp://u:hunter2@cam/s"
        )
    )
    report = "\n".join(map(str, problems))
    assert "hunter2" not in report and "u:***@" in report


def _secure(tmp_path: Path) -> Path:
    (tmp_path / "mqtt.pass").write_text("secret\n")
    (tmp_path / "centre.pub").write_text("key\n")
    path = tmp_path / "agent.yaml"
    path.write_text(
        MINIMAL.replace("127.0.0.1", "127.0.0.1\n  username: u\n  password_file: mqtt.pass")
        + "commands: {public_key_file: centre.pub}\n"
    )
    for name in ["agent.yaml", "mqtt.pass"]:
        os.chmod(tmp_path / name, 0o640)
    os.chmod(tmp_path / "centre.pub", 0o644)
    return path


def test_no_warnings_for_private_files(tmp_path: Path) -> None:
    assert config_warnings(load_config(_secure(tmp_path))) == []


def test_a_world_readable_password_file_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    config = load_config(_secure(tmp_path))
    os.chmod(tmp_path / "mqtt.pass", 0o644)
    (warning,) = config_warnings(config)
    assert str(tmp_path / "mqtt.pass") in warning
    assert f"chmod 640 {tmp_path / 'mqtt.pass'}" in warning
    assert "0644" in warning


def test_world_readable_config_and_world_writable_public_key(tmp_path: Path) -> None:
    config = load_config(_secure(tmp_path))
    os.chmod(tmp_path / "agent.yaml", 0o644)
    os.chmod(tmp_path / "centre.pub", 0o666)
    warnings = config_warnings(config)
    assert len(warnings) == 2
    assert f"chmod 640 {tmp_path / 'agent.yaml'}" in warnings[0]
    assert f"chmod 644 {tmp_path / 'centre.pub'}" in warnings[1]


def test_a_vanished_file_gives_no_warning_and_no_error(tmp_path: Path) -> None:
    config = load_config(_secure(tmp_path))
    (tmp_path / "mqtt.pass").unlink()
    assert config_warnings(config) == []


# --------------------------------------------------------------------------------------------------
# Whatever comes in, only a Config or a ConfigError comes out.


def parses_or_refuses(text: str) -> None:
    try:
        result = parse_config(text, "fuzz.yaml")
    except ConfigError as err:
        assert err.problems and all(isinstance(p, Problem) for p in err.problems)
        assert "Traceback" not in format_report(err)
    else:
        assert isinstance(result, Config)


YAMLISH = st.text(alphabet=string.printable + "ÄßЖ€\u2028" + "{}[]:-#&*!|>'\"%@`", max_size=300)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["off", "no", "017", "GPIO17", "rtsp://a:b@c/d", "1:30"]),
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = [
    "site",
    "mqtt",
    "gpio",
    "buttons",
    "cameras",
    "storage",
    "recording",
    "uplink",
    "indicators",
    "commands",
    "log",
]
EXAMPLE = resources.files("agent").joinpath("data", "agent.example.yaml").read_text()
GOOD: dict[str, Any] = yaml.safe_load(EXAMPLE)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(YAMLISH)
def test_random_text(text: str) -> None:
    parses_or_refuses(text)


@FUZZ
@given(st.binary(max_size=300) | YAMLISH.map(str.encode))
def test_random_bytes_from_a_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "agent.yaml")
        path.write_bytes(data)
        try:
            assert isinstance(load_config(path), Config)
        except ConfigError as err:
            assert all(isinstance(p, Problem) for p in err.problems)


@FUZZ
@given(STRUCTURES)
def test_random_structures(value: object) -> None:
    parses_or_refuses(yaml.safe_dump(value, allow_unicode=True))


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), STRUCTURES, max_size=6))
def test_random_sections(sections: dict[str, object]) -> None:
    parses_or_refuses(yaml.safe_dump(sections, allow_unicode=True))


@FUZZ
@given(st.data())
def test_a_good_config_with_one_value_replaced(data: st.DataObject) -> None:
    config = dict(GOOD)
    section = data.draw(st.sampled_from(KEYS))
    value = config[section]
    if isinstance(value, list):
        value = [dict(item) for item in value]
        target = value[data.draw(st.integers(0, len(value) - 1))]
    else:
        value = dict(value)
        target = value
    target[data.draw(st.sampled_from(sorted(target)) | st.text(max_size=8))] = data.draw(STRUCTURES)
    config[section] = value
    parses_or_refuses(yaml.safe_dump(config, allow_unicode=True))


@FUZZ
@given(st.data())
def test_the_example_with_random_edits(data: st.DataObject) -> None:
    lines = EXAMPLE.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(lines) - 1))
        edit = data.draw(st.sampled_from(["drop", "dup", "insert", "indent"]))
        if edit == "drop":
            del lines[at]
        elif edit == "dup":
            lines.insert(at, lines[at])
        elif edit == "indent":
            lines[at] = data.draw(st.sampled_from([" ", "\t", "  - "])) + lines[at]
        else:
            column = data.draw(st.integers(0, len(lines[at])))
            lines[at] = lines[at][:column] + data.draw(YAMLISH) + lines[at][column:]
    parses_or_refuses("".join(lines))
