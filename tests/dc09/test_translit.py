# ruff: noqa: RUF001, RUF002  (Cyrillic letters are what these tests are about)
"""The transliteration table, row by row, and that nothing it returns can break a frame."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.delivery.dc09.frame import Address, build
from agent.delivery.dc09.translit import CYRILLIC, DEFAULT_MAX_LEN, location_text
from tests.conftest import REPO


def documented_table() -> dict[str, str]:
    """docs/dc09.md's table ("Location text"), as a centre's operator reads it: ``А A, …,
    Ъ -`` (dropped); its 33 Russian and 9 Kazakh letters."""
    text = (REPO / "docs" / "dc09.md").read_text(encoding="utf-8")
    section = text.split("### Location text")[1].split("\n- Case follows")[0]
    pairs = re.findall(r"([А-ЯЁӘҒҚҢӨҰҮҺІ]) ([A-Z]+|-)(?=[,.\s])", section)
    table = {cyr.lower(): "" if latin == "-" else latin.lower() for cyr, latin in pairs}
    assert len(table) == len(pairs) == 42, pairs
    return table


# Read from the documentation, not written out a third time: a change to the module's table
# must be a change to the document the centres are given too.
TABLE = documented_table()
SAFE = re.compile(r"[\x20-\x5a\x5c\x5e-\x7b\x7d\x7e]*\Z")  # printable ASCII, no [ ] |


def test_table_is_the_documented_one() -> None:
    assert CYRILLIC == TABLE


@pytest.mark.parametrize(("cyr", "latin"), sorted(TABLE.items()))
def test_each_letter(cyr: str, latin: str) -> None:
    assert location_text(f"x{cyr}x") == f"x{latin}x"
    if latin:
        assert location_text(cyr.upper() + "x") == latin.capitalize() + "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Главный вход, 1 этаж", "Glavnyy vkhod, 1 etazh"),
        ("Спортзал", "Sportzal"),
        ("Щука", "Shchuka"),
        ("ЩИТ", "SHCHIT"),
        ("ШКОЛА №42", "SHKOLA No42"),  # NFKD spells № out
        ("Қабылдау бөлмесі", "Qabyldau boelmesi"),
        ("Мұғалімдер бөлмесі, 2-қабат", "Mughalimder boelmesi, 2-qabat"),
        ("Әкімшілік", "Aekimshilik"),
        ("ҮЙ", "UEY"),
        ("Кіреберіс (негізгі)", "Kireberis (negizgi)"),
        ("Café «Ёлка»", "Cafe ?Elka?"),
        ("Room [A|B] ^1^", "Room (A/B) '1'"),
        ("line\none\ttab\x00nul\x7fdel", "line one tab nul del"),
        ("  spaces   inside  ", "spaces inside"),
        ("Exit 🚪 east", "Exit ? east"),
    ],
)
def test_locations(text: str, expected: str) -> None:
    assert location_text(text) == expected


def test_length_is_capped() -> None:
    assert len(location_text("Щ" * 500)) == DEFAULT_MAX_LEN
    assert location_text("абв где", max_len=5) == "abv g"
    assert location_text("абв где", max_len=4) == "abv"  # no trailing space


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_safe_in_a_frame(text: str) -> None:
    out = location_text(text)
    assert SAFE.match(out) and len(out) <= DEFAULT_MAX_LEN
    build("SIA-DCS", 1, Address("1234"), "#1234|Nri1/PA001", extended=[f"L{out}"], sent_at=0)
