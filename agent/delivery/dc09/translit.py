# ruff: noqa: RUF001, RUF002  (Cyrillic letters are this module's subject, not look-alikes)
"""Location text for a DC-09 frame: Russian and Kazakh to ASCII, and nothing that can break one.

DC-09 frames are ASCII, and a school's locations are written in Russian or Kazakh. A byte
outside printable ASCII, or a ``[``/``]`` inside extended data, would corrupt the frame (the
receiver would NAK it, and the alarm would wait), so every location passes through
:func:`location_text` before it goes near one.

The table (the reference for docs/dc09.md; tests/dc09/test_translit.py checks every row):

- Russian: the common passport-style romanisation (close to BGN/PCGN without diacritics), as an
  operator reading Latin letters would sound it out: А A, Б B, В V, Г G, Д D, Е E, Ё E, Ж ZH,
  З Z, И I, Й Y, К K, Л L, М M, Н N, О O, П P, Р R, С S, Т T, У U, Ф F, Х KH, Ц TS, Ч CH,
  Ш SH, Щ SHCH, Ъ (dropped), Ы Y, Ь (dropped), Э E, Ю YU, Я YA.
- Kazakh letters beyond Russian, after the 2021 Kazakh Latin alphabet, with its diacritics
  written out in ASCII (as German writes ä as ae): Ә AE, Ғ GH, Қ Q, Ң NG, Ө OE, Ұ U, Ү UE,
  Һ H, І I.
- Case follows the source: a capital gives a capitalised group (Щ -> Shch), or an all-capital
  one inside a capitalised word (ЩИ -> SHCHI).
- Any other letter with a Latin base loses its accents (é -> e); anything else non-ASCII becomes
  ``?``; control characters and runs of whitespace become one space; ``[`` ``]`` ``|`` ``^``
  (the frame's and SIA-DCS text's delimiters) become ``(`` ``)`` ``/`` ``'``.
- The result is cut to ``max_len`` characters (a frame has room for 4095 bytes in all, and
  pysiaalarm reads a TCP frame in one 1024-byte ``recv``).
"""

from __future__ import annotations

import unicodedata

DEFAULT_MAX_LEN = 128

CYRILLIC: dict[str, str] = {
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
    # Kazakh
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

_DELIMITERS = {"[": "(", "]": ")", "|": "/", "^": "'"}


def location_text(text: str, max_len: int = DEFAULT_MAX_LEN) -> str:
    """``text`` as printable ASCII that is safe inside a DC-09 extended-data block."""
    out: list[str] = []
    for i, ch in enumerate(text):
        out.append(_one(ch, text[i - 1] if i else "", text[i + 1 : i + 2]))
    return " ".join("".join(out).split())[:max_len].rstrip()


def _one(ch: str, before: str, after: str) -> str:
    if ch in _DELIMITERS:
        return _DELIMITERS[ch]
    if " " <= ch <= "~":
        return ch
    low = ch.lower()
    if low in CYRILLIC:
        latin = CYRILLIC[low]
        if ch == low or not latin:
            return latin
        # A capital: all capitals if a neighbour is a capital letter too (ЩИ, ИЩ), else Shch.
        shout = (after.isalpha() and after.isupper()) or (before.isalpha() and before.isupper())
        return latin.upper() if shout else latin.capitalize()
    if unicodedata.category(ch)[0] in "CZ":  # control, format, separators: whitespace
        return " "
    base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")
    base = "".join(c for c in base if " " <= c <= "~" and c not in _DELIMITERS)
    return base or "?"
