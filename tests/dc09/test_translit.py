# ruff: noqa: RUF001  (Cyrillic letters are what these tests are about)
"""The transliteration table, row by row, and that nothing it returns can break a frame."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.delivery.dc09.frame import Address, build
from agent.delivery.dc09.translit import CYRILLIC, DEFAULT_MAX_LEN, location_text

# The documented table (translit.py, docs/dc09.md), written out again on purpose: a change to
# the module's table must be a change to this test too.
TABLE = {
    "а": "a",
    "б": "b",
    "в": "v",
    "г": "g",
    "д": "d",
    "е": "e",
    "ё": "e",
    "ж": "zh",
    "з": "z",
    "и": "i",
    "й": "y",
    "к": "k",
    "л": "l",
    "м": "m",
    "н": "n",
    "о": "o",
    "п": "p",
    "р": "r",
    "с": "s",
    "т": "t",
    "у": "u",
    "ф": "f",
    "х": "kh",
    "ц": "ts",
    "ч": "ch",
    "ш": "sh",
    "щ": "shch",
    "ъ": "",
    "ы": "y",
    "ь": "",
    "э": "e",
    "ю": "yu",
    "я": "ya",
    "ә": "ae",
    "ғ": "gh",
    "қ": "q",
    "ң": "ng",
    "ө": "oe",
    "ұ": "u",
    "ү": "ue",
    "һ": "h",
    "і": "i",
}

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
