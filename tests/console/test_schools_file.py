"""The console's schools file and tile URL: every problem reported with its key and line (never a
traceback), unknown keys refused, coordinates in range and in pairs, site ids as the protocol's;
a tile URL that is not http(s) with {z}, {x} and {y} refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.centre.console.schools import School, load_schools, parse_schools, tile_origin
from agent.centre.console.server import security_headers
from agent.cli import EXIT_CONFIG, main
from agent.errors import AgentError, ConfigError

GOOD = """\
schools:
  - id: sch-almaty-012
    name: Школа-гимназия № 12 имени Абая
    address: Алматы, ул. Абая, 10
    district: Алмалинский район
    lat: 43.2389
    lon: -76.8897
  - {id: sch-7, name: "Мектеп-лицей № 7", address: мкр. Самал-2}
"""

BAD = """\
schools:
  - id: Sch_12
    name: Школа № 12
    adress: ул. Абая, 10
    lat: 91
    lon: 76.9
  - id: sch-7
    name: Школа № 7
    address: мкр. Самал-2
    lat: 43,25
  - id: sch-7
    name: "Школа\\u200b № 7"
    address: ул. Сатпаева, 22
    lon: 181
colour: red
"""


def test_a_good_file_keeps_names_as_written(tmp_path: Path) -> None:
    path = tmp_path / "schools.yaml"
    path.write_text("\ufeff" + GOOD, encoding="utf-8")  # a BOM from a Windows editor
    assert load_schools(path) == (
        School(
            "sch-almaty-012",
            "Школа-гимназия № 12 имени Абая",
            "Алматы, ул. Абая, 10",
            "Алмалинский район",
            43.2389,
            -76.8897,
        ),
        School("sch-7", "Мектеп-лицей № 7", "мкр. Самал-2"),
    )


def test_every_problem_with_its_key_and_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schools(BAD, "schools.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "schools.yaml:2: schools[0].id: 'Sch_12' is not valid: lower-case letters, digits and "
        "'-', starting with a letter or digit, at most 63 characters: the school's site.id in "
        "its agent's config",
        "schools.yaml:2: schools[0].address: required but missing",
        "schools.yaml:4: schools[0].adress: unknown key 'adress'; did you mean 'address'?",
        "schools.yaml:5: schools[0].lat: must be from -90 to 90, got 91",
        "schools.yaml:7: schools[1].lon: lat and lon go together: give both, or neither (no "
        "place on the map)",  # a missing key: at its mapping
        "schools.yaml:10: schools[1].lat: expected a number, got '43,25': write the decimal "
        "point as '.', such as 43.25",
        "schools.yaml:11: schools[2].lat: lat and lon go together: give both, or neither (no "
        "place on the map)",
        "schools.yaml:11: schools[2].id: site id sch-7 is already used by schools[1]",
        "schools.yaml:12: schools[2].name: contains the invisible or control character U+200B "
        "at position 6: retype the text",
        "schools.yaml:14: schools[2].lon: must be from -180 to 180, got 181",
        "schools.yaml:15: colour: unknown key 'colour'; allowed: schools",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "schools.yaml: the file is empty: start from the example in docs/console.md"),
        ("schools: []\n", "schools.yaml:1: schools: the list is empty"),
        ("- id: a\n", "schools.yaml:1: the top level must be sections such as schools:"),
        ("schools:\n  - id: a\n   name: b\n", "schools.yaml:3: YAML syntax error"),
        (
            "schools:\n  - {id: a, name: b, address: c, lat: 1, lon: 2, lon: 3}\n",
            "schools.yaml:2: schools[0].lon: duplicate key",
        ),
    ],
)
def test_a_broken_file_is_one_message(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schools(text, "schools.yaml")
    assert str(caught.value).startswith(problem), str(caught.value)


def test_the_command_reports_the_file_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "schools.yaml").write_text(BAD, encoding="utf-8")
    base = ["console", "--store", str(tmp_path / "nowhere"), "--data", str(tmp_path / "data")]
    assert main([*base, "--schools", str(tmp_path / "schools.yaml")]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "schools.yaml:5: schools[0].lat: must be from -90 to 90" in err
    assert "11 problems in" in err and "Traceback" not in err
    assert main([*base, "--schools", str(tmp_path / "missing.yaml")]) == EXIT_CONFIG
    assert "missing.yaml: file not found" in capsys.readouterr().err
    assert main([*base, "--map-tiles", "ftp://tiles.example/{z}/{x}/{y}.png"]) == 1
    assert "give an http:// or https:// URL" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_tile_urls() -> None:
    assert tile_origin("https://Tiles.Example/osm/{z}/{x}/{y}.png") == "https://tiles.example"
    assert tile_origin("http://10.1.2.3:8080/{z}/{y}/{x}.png?v=2") == "http://10.1.2.3:8080"
    for url, why in [
        ("tiles.example/{z}/{x}/{y}.png", "give an http:// or https:// URL"),
        ("https://tiles.example/{z}/{x}.png", "{y} missing"),
        ("https://{s}.tiles.example/{z}/{x}/{y}.png", "one tile server"),
        ("https://tiles.example/{z}/{x}/{y}.png?key={key}", "not {key}"),
        ("https://user:pw@tiles.example/{z}/{x}/{y}.png", "no user name or password"),
        ("https://tiles.example:0x1/{z}/{x}/{y}.png", "the port is not a number"),
        ("https://[::1]/{z}/{x}/{y}.png", "an IPv6 address cannot be named"),
        ("https://tiles.example/{z}/{x}/{y}.png; img-src *", "spaces, quotes"),
    ]:
        with pytest.raises(AgentError) as caught:
            tile_origin(url)
        assert why in str(caught.value), (url, str(caught.value))
    csp = security_headers(("https://tiles.example",))["Content-Security-Policy"]
    assert "img-src 'self' data: blob: https://tiles.example;" in csp
    assert "img-src 'self' data: blob:;" in security_headers()["Content-Security-Policy"]
