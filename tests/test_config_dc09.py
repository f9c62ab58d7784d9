"""The dc09 section and the buttons' zones, as a technician writes them (the corpus of mistakes
is tests/configs/bad/dc09-*.yaml); only a Config or a ConfigError comes out."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import config_warnings, load_config, parse_config
from agent.delivery.dc09.events import EventKind, MessageFormat
from agent.delivery.dc09.settings import DEFAULT_EVENTS, Settings, Transport
from tests.test_config import STRUCTURES, parses_or_refuses, problems_of

KEY = bytes(range(16))

FULL = """\
site: {id: school-042}
mqtt: {host: 127.0.0.1}
buttons:
  - {id: entrance, pin: 17, location: Main entrance, number: 1}
  - {id: office, pin: 22, location: Office, number: 12, holdup: true}
dc09:
  account: "1234"
  key_file: dc09.key
  format: adm-cid
  receivers:
    - {host: 10.0.0.5, port: 5000}
    - {host: "fd00::5", port: 5001, transport: UDP, account: "ABCD12", receiver: "12",
       line: "3", key_file: backup.key}
  events: [panic, holdup, panic_restore]
  supervision_s: 30
  test_report_s: 0
"""


def _full(tmp_path: Path) -> Path:
    (tmp_path / "dc09.key").write_text(KEY.hex() + "\n")
    (tmp_path / "backup.key").write_text(bytes(range(32)).hex().upper())
    for name in ("dc09.key", "backup.key"):
        os.chmod(tmp_path / name, 0o640)
    path = tmp_path / "agent.yaml"
    path.write_text(FULL)
    os.chmod(path, 0o640)
    return path


def test_a_full_section_becomes_the_transmitters_settings(tmp_path: Path) -> None:
    cfg = load_config(_full(tmp_path))
    assert cfg.dc09 is not None
    s = cfg.dc09.settings
    primary, backup = s.receivers
    assert (primary.host, primary.port, primary.transport, primary.account) == (
        "10.0.0.5",
        5000,
        Transport.TCP,
        "1234",
    )  # tcp by default, the section's account
    assert (primary.receiver, primary.line, primary.key) == ("0", "0", KEY)
    assert (backup.host, backup.transport, backup.account, backup.receiver, backup.line) == (
        "fd00::5",
        Transport.UDP,
        "ABCD12",
        "12",
        "3",
    )
    assert backup.key == bytes(range(32))  # its own key file, not the section's
    assert s.format is MessageFormat.ADM_CID
    assert s.events == {EventKind.PANIC, EventKind.HOLDUP, EventKind.PANIC_RESTORE}
    assert (s.supervision_s, s.test_report_s) == (30, None)  # 0: no periodic test reports
    assert (s.ack_timeout_s, s.attempts, s.retry_max_s) == (5.0, 3, 10.0)  # Settings' defaults
    assert cfg.dc09.key_files == (tmp_path / "dc09.key", tmp_path / "backup.key")
    assert [(b.number, b.holdup) for b in cfg.buttons] == [(1, False), (12, True)]
    assert config_warnings(cfg) == []
    assert "key=" not in repr(cfg)  # the keys never reach a log line


def test_what_is_not_written_is_the_settings_default() -> None:
    cfg = parse_config(
        FULL.split("dc09:")[0]
        + """\
dc09:
  account: "1234"
  receivers: [{host: 10.0.0.5, port: 5000}]
"""
    )
    assert cfg.dc09 is not None
    default = Settings(cfg.dc09.settings.receivers)
    assert cfg.dc09.settings == default
    assert default.events == DEFAULT_EVENTS and default.test_report_s == 86400


def test_no_section_no_path_and_no_zone_needed() -> None:
    cfg = parse_config("""\
site: {id: school-042}
mqtt: {host: 127.0.0.1}
buttons: [{id: entrance, pin: 17, location: Main entrance}]
""")
    assert cfg.dc09 is None
    assert (cfg.buttons[0].number, cfg.buttons[0].holdup) == (None, False)


def test_a_key_file_others_may_read_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    cfg = load_config(_full(tmp_path))
    os.chmod(tmp_path / "backup.key", 0o644)
    (warning,) = config_warnings(cfg)
    assert f"chmod 640 {tmp_path / 'backup.key'}" in warning
    assert "holds secrets" in warning


def test_a_problem_of_a_default_is_reported_once_where_it_is_written() -> None:
    problems = problems_of(
        FULL.replace('account: "1234"', 'account: "12"')
        .replace("  key_file: dc09.key\n", "")
        .replace(", key_file: backup.key", "")
        .replace('account: "ABCD12", ', "")
    )
    assert [(p.path, p.line) for p in problems] == [("dc09.account", 7)]
    assert "3-16 hex digits" in problems[0].message


def _example_dc09() -> str:
    """The example's commented dc09 block, uncommented, after the rest of the example."""
    text = resources.files("agent").joinpath("data", "agent.example.yaml").read_text()
    head, _, block = text.partition("# dc09:")
    return (
        head
        + "\n".join(line.removeprefix("# ") for line in ("# dc09:" + block).splitlines())
        + "\n"
    )


def test_the_examples_dc09_block_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = _example_dc09()
    (tmp_path / "dc09.key").write_text("00" * 16)
    cfg = parse_config(text, "agent.example.yaml", base_dir=tmp_path)
    assert cfg.dc09 is not None
    assert [r.name for r in cfg.dc09.settings.receivers] == [
        "tcp://192.0.2.10:5000",
        "udp://198.51.100.10:5000",
    ]
    # every event the box makes, but the restores on release (tamper needs EOL resistors)
    assert cfg.dc09.settings.events == DEFAULT_EVENTS - {EventKind.TAMPER, EventKind.TAMPER_RESTORE}
    assert [b.number for b in cfg.buttons] == [1, 2]
    for key in (
        "transport",
        "receiver",
        "line",
        "supervision_s",
        "test_report_s",
        "ack_timeout_s",
        "attempts",
        "retry_max_s",
        "format",
        "events",
    ):
        assert f"{key}:" in text


GOOD: dict[str, Any] = yaml.safe_load(_example_dc09())
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.data())
def test_the_dc09_section_with_one_value_replaced(data: st.DataObject) -> None:
    section = dict(GOOD["dc09"])
    receivers = [dict(r) for r in section["receivers"]]
    section["receivers"] = receivers
    target = data.draw(st.sampled_from([section, *receivers]))
    target[data.draw(st.sampled_from(sorted(target)) | st.text(max_size=8))] = data.draw(STRUCTURES)
    parses_or_refuses(yaml.safe_dump({**GOOD, "dc09": section}, allow_unicode=True))


@FUZZ
@given(STRUCTURES)
def test_random_dc09_sections(value: object) -> None:
    parses_or_refuses(yaml.safe_dump({**GOOD, "dc09": value}, allow_unicode=True))
