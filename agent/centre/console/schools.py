"""The schools the console knows by name (``--schools FILE``) and the map's tiles (``--map-tiles``).

The protocol carries only a site id (docs/protocol.md), so the centre keeps its own list of what
each id is: the school's name as written (Cyrillic, Kazakh, anything), its address, its district
and, optionally, where it is. The file is read as the agent's config is (agent/config/reader.py):
every problem in it reported at once with its key and line, an unknown key refused with a "did
you mean", never a traceback. It is read once at start: restart the console after changing it.

The map's tiles come from one configured XYZ template and nowhere else (a police network may
have no internet); without one the page draws a plan (the same projection on an empty area,
with a scale). The tiles' origin is the one other origin the page's Content-Security-Policy
lets images come from (server.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.config.converters import as_list_of, as_number, as_section, as_text, matching
from agent.config.reader import At, Ctx, Invalid, Map, converted
from agent.config.yamlfile import compose, read_text
from agent.delivery.protocol import MAX_LABEL_CHARS, SITE_ID
from agent.errors import AgentError, ConfigError
from agent.logs import UNSAFE_CHARS

MAX_BYTES = 16 << 20  # 7,600 schools take about 2 MB
MAX_ADDRESS_CHARS = 300
START = 'start from the example in docs/console.md, "The schools file"'

_SITE_ID = matching(
    SITE_ID.pattern,
    "lower-case letters, digits and '-', starting with a "
    "letter or digit, at most 63 characters: the school's site.id in its agent's "
    "config",
)


@dataclass(frozen=True, slots=True)
class School:
    site_id: str
    name: str
    address: str
    district: str | None = None
    lat: float | None = None  # both or neither
    lon: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "name": self.name,
            "address": self.address,
            "district": self.district,
            "lat": self.lat,
            "lon": self.lon,
        }


def load_schools(path: str | Path) -> tuple[School, ...]:
    """The schools of ``path``, in its order; a ConfigError lists every problem in it."""
    return parse_schools(read_text(path, MAX_BYTES, START), str(path))


def parse_schools(text: str, source: str = "<string>") -> tuple[School, ...]:
    ctx = Ctx(source, Path.cwd())
    root = compose(text, ctx, start=START, sections="schools:")
    schools = None
    if root is not None:
        schools = converted(as_section(_root), At(root, "", ctx))
    if schools is None or ctx.problems:
        raise ConfigError([*sorted(ctx.problems, key=lambda p: p.line or 0)])
    return schools


def _root(m: Map) -> tuple[School, ...] | None:
    schools = m.req("schools", as_list_of(as_section(_school)))
    if schools == ():
        m.problem("schools", "the list is empty: add the schools, or leave out --schools")
        return None
    return schools


def _school(m: Map) -> School | None:
    site_id = m.req("id", _SITE_ID)
    name = m.req("name", _text(MAX_LABEL_CHARS))
    address = m.req("address", _text(MAX_ADDRESS_CHARS))
    district = m.opt("district", _text(MAX_LABEL_CHARS))
    lat = m.opt("lat", _degrees(90))
    lon = m.opt("lon", _degrees(180))
    if m.present("lat") != m.present("lon"):
        missing = "lon" if m.present("lat") else "lat"
        m.problem(missing, "lat and lon go together: give both, or neither (no place on the map)")
    if site_id is not None:
        m.claim("id", f"site id {site_id}", m.at.path)
    placed = lat is not None and lon is not None
    if (
        site_id is None
        or name is None
        or address is None
        or (placed != (m.present("lat") or m.present("lon")))
    ):  # reported above
        return None
    return School(site_id, name, address, district, lat, lon)


def _text(limit: int) -> Callable[[At], str]:
    """Any script, at most ``limit`` characters, nothing invisible (as the agent's labels)."""

    def convert(at: At) -> str:
        text = as_text(at)
        if len(text) > limit:
            raise Invalid(f"at most {limit} characters, got {len(text)}")
        bad = UNSAFE_CHARS.search(text)
        if bad:
            raise Invalid(
                f"contains the invisible or control character U+{ord(bad.group()):04X}"
                f" at position {bad.start() + 1}: retype the text"
            )
        return text

    return convert


def _degrees(limit: float) -> Callable[[At], float]:
    number = as_number(-limit, limit)

    def convert(at: At) -> float:
        try:
            return number(at)
        except Invalid as bad:
            value = getattr(at.node, "value", "")
            if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9]+,[0-9]+", value.strip()):
                raise Invalid(
                    f"{bad.message}: write the decimal point as '.', such as "
                    f"{value.strip().replace(',', '.')}"
                ) from None
            raise

    return convert


# --- the map's tiles --------------------------------------------------------------------------

_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


def tile_origin(template: str) -> str:
    """The origin (``https://tiles.example:8443``) of an XYZ tile template such as
    ``https://tiles.example/{z}/{x}/{y}.png``; an AgentError says what is wrong with it."""

    def bad(why: str) -> AgentError:
        return AgentError(f"--map-tiles {template!r}: {why}")

    if any(c.isspace() or not c.isprintable() or c in "\"'<>\\`" for c in template):
        raise bad("spaces, quotes and control characters are not allowed")
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https"):
        raise bad("give an http:// or https:// URL such as https://tiles.example/{z}/{x}/{y}.png")
    if "{" in parts.netloc or "}" in parts.netloc:
        raise bad("the placeholders go in the path, one tile server (no {s})")
    if "@" in parts.netloc:
        raise bad("no user name or password in the URL: every officer's browser would see it")
    host = parts.hostname or ""
    if not _HOST.fullmatch(host):
        raise bad(
            "give a host name or an IPv4 address (an IPv6 address cannot be named in the "
            "page's Content-Security-Policy)"
        )
    try:
        port = parts.port
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    missing = [p for p in ("{z}", "{x}", "{y}") if p not in template]
    if missing:
        raise bad(f"{', '.join(missing)} missing: an XYZ template has {{z}}, {{x}} and {{y}}")
    other = sorted(set(re.findall(r"\{[^{}]*\}", template)) - {"{z}", "{x}", "{y}"})
    if other:
        raise bad(f"only {{z}}, {{x}} and {{y}} are filled in, not {', '.join(other)}")
    rest = re.sub(r"\{[zxy]\}", "", template)
    if "{" in rest or "}" in rest:
        raise bad("a brace outside {z}, {x} and {y}: write it as %7B or %7D")
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
