"""The schools board with the centre's schools file, in a real browser: names wherever a site id
shows, a map from a tile server this test runs (asked for exactly the tiles of the markers'
view), markers that turn red on an alarm and open the school, a hostile name shown as text, and
without --map-tiles a plan that asks nothing of anyone but the console."""

from __future__ import annotations

import math
import struct
import threading
import urllib.request
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.centre.console.routes import Settings
from agent.centre.console.schools import load_schools
from tests.conftest import wait_for
from tests.console.conftest import (
    ESCALATE_S,
    HOSTILE_LOCATION,
    Centre4Console,
    log_in,
    press,
    screenshot,
    start_console,
)

NAME = "Школа-гимназия № 12 имени Абая"
SCHOOLS = f"""\
# the centre's schools: two on the map, one without coordinates
schools:
  - id: sim-school
    name: {NAME}
    address: Алматы, ул. Абая, 10
    district: Алмалинский район
    lat: 43.2389
    lon: 76.8897
  - id: school-hostile
    name: "{HOSTILE_LOCATION}"
    address: Алматы, ул. Сатпаева, 22
    lat: 43.2315
    lon: 76.9102
  - id: school-unplaced
    name: Мектеп-лицей № 7
    address: Алматы, мкр. Самал-2
"""
PLACED = {"sim-school": (43.2389, 76.8897), "school-hostile": (43.2315, 76.9102)}

# The page's own constants (static/map.js): the arithmetic below is this test's, not the page's.
TILE, MAX_ZOOM, MARGIN = 256, 17, 48


def _world(lat: float, lon: float, z: int) -> tuple[float, float]:
    size = TILE * 2**z
    return (
        (lon + 180) / 360 * size,
        (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * size,
    )


def _js_round(x: float) -> int:
    return math.floor(x + 0.5)


def _view(width: int, height: int) -> tuple[int, int, int]:
    """(zoom, left, top) of the deepest view that holds every placed school within the margin."""
    for z in range(MAX_ZOOM, -1, -1):
        xs, ys = zip(*(_world(lat, lon, z) for lat, lon in PLACED.values()), strict=True)
        if max(xs) - min(xs) <= width - 2 * MARGIN and max(ys) - min(ys) <= height - 2 * MARGIN:
            return (
                z,
                _js_round((min(xs) + max(xs) - width) / 2),
                _js_round((min(ys) + max(ys) - height) / 2),
            )
    raise AssertionError("the schools do not fit at any zoom")


def _tiles(z: int, left: int, top: int, width: int, height: int) -> set[str]:
    return {
        f"/{z}/{tx % 2**z}/{ty}.png"
        for ty in range(top // TILE, math.ceil((top + height) / TILE))
        if 0 <= ty < 2**z
        for tx in range(left // TILE, math.ceil((left + width) / TILE))
    }


def _png() -> bytes:
    """A one-pixel grey PNG: what the tile server answers for every tile."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00\xc8\xd0\xd4"))
        + chunk(b"IEND", b"")
    )


class _TileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _TileHandler)

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{{z}}/{{x}}/{{y}}.png"


class _TileHandler(BaseHTTPRequestHandler):
    server: _TileServer
    PNG = _png()

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.PNG)))
        self.end_headers()
        self.wfile.write(self.PNG)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def tiles() -> Iterator[_TileServer]:
    server = _TileServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _csp(url: str) -> str:
    with urllib.request.urlopen(url + "/login", timeout=5) as response:
        return str(response.headers["Content-Security-Policy"])


def _in_map(page: Any, selector: str, centre: bool = False) -> tuple[float, float]:
    """Where an element (its top left corner, or its centre) is in the map's area."""
    x, y = page.eval_on_selector(
        selector,
        """(e, centre) => {
        const r = e.getBoundingClientRect(), k = centre ? 0.5 : 0;
        const a = document.querySelector('#school-map .map-area').getBoundingClientRect();
        return [r.x + k * r.width - a.x, r.y + k * r.height - a.y]; }""",
        centre,
    )
    return float(x), float(y)


def _marker(site: str) -> str:
    return f'#school-map .marker[data-site="{site}"]'


def _wait_state(page: Any, site: str, state: str) -> None:
    page.wait_for_function(
        "([sel, state]) => document.querySelector(sel)?.dataset.state === state",
        arg=[_marker(site), state],
    )


def test_schools_board_names_map_and_plan(
    centre: Centre4Console, browser: Any, tiles: _TileServer, tmp_path: Path
) -> None:
    (tmp_path / "schools.yaml").write_text(SCHOOLS, encoding="utf-8")
    schools = load_schools(tmp_path / "schools.yaml")
    store = tmp_path / "centre"
    mapped = start_console(
        tmp_path,
        centre.site.broker.url,
        centre.keys,
        store,
        "console-map",
        settings=Settings(escalate_s=ESCALATE_S, schools=schools, map_tiles=tiles.template),
    )
    planned = None
    try:
        assert f"img-src 'self' data: blob: http://127.0.0.1:{tiles.server_address[1]};" in (
            _csp(mapped.url)
        )
        page = log_in(browser, mapped.url, "ivanov")
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.click(".tab[data-tab=schools]")

        # The board: every school of the file, by name with its id; the map: one marker each.
        page.locator('tr.site-row[data-site="school-unplaced"]').wait_for()
        assert page.locator("tr.site-row").count() == 3
        row = page.locator('tr.site-row[data-site="sim-school"]')
        assert row.locator(".school-name").text_content() == NAME
        assert row.locator(".site-id").text_content() == "sim-school"
        assert page.locator("#school-map .marker").count() == 2
        _wait_state(page, "sim-school", "online")
        assert page.locator(_marker("school-hostile")).get_attribute("data-state") == ("unknown")

        # The tiles of the markers' view, and nothing else; the markers where they belong.
        width, height = page.eval_on_selector(
            "#school-map .map-area", "a => [a.clientWidth, a.clientHeight]"
        )
        z, left, top = _view(width, height)
        expected = _tiles(z, left, top, width, height)
        wait_for(lambda: expected <= set(tiles.paths), 5, f"the tiles {sorted(expected)}")
        assert set(tiles.paths) == expected, sorted(set(tiles.paths) - expected)
        assert page.get_attribute("#school-map", "data-zoom") == str(z)
        for site, (lat, lon) in PLACED.items():
            wx, wy = _world(lat, lon, z)
            x, y = _in_map(page, _marker(site) + " .dot", centre=True)
            assert abs(x - (wx - left)) < 1.5 and abs(y - (wy - top)) < 1.5, (site, x, y)
            tx, ty = _in_map(
                page, f'#school-map img.tile[data-tile="{z}/{int(wx // TILE)}/{int(wy // TILE)}"]'
            )  # the tile that holds the marker's place
            assert 0 <= x - tx < TILE and 0 <= y - ty < TILE, (site, tx, ty)

        # A hostile name is text on the board and on the map; nothing of it runs.
        hostile = page.locator('tr.site-row[data-site="school-hostile"] .school-name')
        assert hostile.text_content() == HOSTILE_LOCATION
        assert page.locator(_marker("school-hostile") + " .marker-name").text_content() == (
            HOSTILE_LOCATION
        )
        assert page.locator("#schools script, #schools img:not(.tile)").count() == 0
        assert page.title() != "pwned" and not dialogs

        # An alarm turns its marker red; the marker opens the school, the school its alarm.
        event = press(centre.agent, "entrance")
        _wait_state(page, "sim-school", "alarm")
        page.click(_marker("sim-school"))
        assert page.locator("#school-card .school-name").text_content() == NAME
        assert "selected" in (row.get_attribute("class") or "")
        page.click(f'#school-card .open-alarm[data-key="sim-school/{event}"]')
        queued = page.locator(f'tr.alarm[data-key="sim-school/{event}"]')
        assert "selected" in (queued.get_attribute("class") or "")
        assert NAME in (queued.locator("td.site").text_content() or "")
        assert page.locator("#alarm-detail .fact-address").text_content() == (
            "Алматы, ул. Абая, 10"
        )
        page.fill("#alarm-detail .ack-reason", "Наряд 7 выехал")
        page.click("#alarm-detail .ack-button")
        page.locator("#alarm-detail .acked-by").wait_for()
        page.click(".tab[data-tab=schools]")
        _wait_state(page, "sim-school", "online")
        assert (
            page.evaluate(
                "Object.keys(MESSAGES.en).filter((k) => !(k in MESSAGES.ru) || !(k in MESSAGES.kk))"
            )
            == []
        )
        page.context.close()

        # Without tiles: a plan with a scale, and no request to anyone but the console.
        asked = len(tiles.paths)
        planned = start_console(
            tmp_path,
            centre.site.broker.url,
            centre.keys,
            store,
            "console-plan",
            settings=Settings(escalate_s=ESCALATE_S, schools=schools),
        )
        assert "img-src 'self' data: blob:;" in _csp(planned.url)
        requests: list[str] = []
        chief = log_in(browser, planned.url, "chief", requests)
        chief.select_option("#lang", "en")
        chief.click(".tab[data-tab=schools]")
        chief.locator("#school-map.plan .marker").nth(1).wait_for()
        _wait_state(chief, "sim-school", "alarm")  # this console's own incidents: not acked here
        width, height = chief.eval_on_selector(
            "#school-map .map-area", "a => [a.clientWidth, a.clientHeight]"
        )
        z, left, top = _view(width, height)
        metres, unit = (chief.text_content("#school-map .map-scale .label") or "").split()
        bar = chief.eval_on_selector("#school-map .map-scale .bar", "b => b.offsetWidth")
        lat = math.degrees(
            math.atan(math.sinh(math.pi * (1 - 2 * (top + height / 2) / (TILE * 2**z))))
        )
        per_px = 40075016.686 * math.cos(math.radians(lat)) / (TILE * 2**z)
        assert abs(bar * per_px - float(metres) * (1000 if unit == "km" else 1)) < 2 * per_px
        assert chief.locator("#school-map .map-tiles img").count() == 0
        assert "1" in (chief.text_content("#school-map .unplaced") or "")
        chief.click(_marker("sim-school"))
        chief.locator('tr.site-row[data-site="sim-school"] td.health-at').wait_for()
        screenshot(chief, "schools")
        assert requests and all(u.startswith(planned.url + "/") for u in requests), requests
        assert len(tiles.paths) == asked
        chief.context.close()
    finally:
        if planned is not None:
            planned.stop()
        mapped.stop()
