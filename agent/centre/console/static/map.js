"use strict";
// The schools on a map: tiles from the configured XYZ URL only (ME.map.tiles), or, without one,
// a plan (the same projection on an empty area, with a grid and a scale), so a police network
// without tiles still sees where its schools are. No map library: Web Mercator's arithmetic is
// the few functions below, checked against an independent Python version in
// tests/console/test_schools.py. Names are untrusted: text nodes only (el), never markup.

const TILE = 256;  // pixels per tile side
const MAX_LAT = 85.0511287798;  // Web Mercator's square world ends here
const MAX_ZOOM = 17;
const MAP_MARGIN = 48;  // pixels kept around the schools when the view is fitted
const EQUATOR_M = 40075016.686;
const CROWDED = 60;  // more schools in view than this: their names only on hover (title)

// A point's world pixel at zoom z: (0, 0) is the north-west corner of tile z/0/0.
function mercator(lat, lon, z) {
  const size = TILE * 2 ** z;
  const phi = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * Math.PI / 180;
  return { x: (lon + 180) / 360 * size,
           y: (1 - Math.log(Math.tan(phi) + 1 / Math.cos(phi)) / Math.PI) / 2 * size };
}

function latitudeAt(y, z) {
  return Math.atan(Math.sinh(Math.PI * (1 - 2 * y / (TILE * 2 ** z)))) * 180 / Math.PI;
}

// The deepest zoom at which all points fit in width x height less the margin, centred on them;
// left and top are the view's north-west corner in world pixels.
function fitView(points, width, height) {
  const world = points.map((p) => mercator(p.lat, p.lon, 0));
  const xs = world.map((p) => p.x), ys = world.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  let z = MAX_ZOOM;
  while (z > 0 && ((x1 - x0) * 2 ** z > width - 2 * MAP_MARGIN || (y1 - y0) * 2 ** z > height - 2 * MAP_MARGIN)) z--;
  return { z, left: Math.round(((x0 + x1) * 2 ** z - width) / 2), top: Math.round(((y0 + y1) * 2 ** z - height) / 2) };
}

// The tiles under the view, each with where it goes; x wraps round the world, rows past the
// poles stay empty.
function tilesFor(view, width, height) {
  const n = 2 ** view.z;
  const tiles = [];
  for (let ty = Math.floor(view.top / TILE); ty * TILE < view.top + height; ty++) {
    if (ty < 0 || ty >= n) continue;
    for (let tx = Math.floor(view.left / TILE); tx * TILE < view.left + width; tx++) {
      tiles.push({ z: view.z, x: ((tx % n) + n) % n, y: ty, left: tx * TILE - view.left, top: ty * TILE - view.top });
    }
  }
  return tiles;
}

function tileUrl(template, tile) {
  return template.replaceAll("{z}", tile.z).replaceAll("{x}", tile.x).replaceAll("{y}", tile.y);
}

// A round distance (1, 2 or 5 times a power of ten) at most `most` pixels long at the view's
// centre, and its length in pixels.
function scaleFor(view, width, height, most) {
  const lat = latitudeAt(view.top + height / 2, view.z);
  const perPixel = EQUATOR_M * Math.cos(lat * Math.PI / 180) / (TILE * 2 ** view.z);
  const unit = 10 ** Math.floor(Math.log10(perPixel * most));
  const metres = [5, 2, 1].map((k) => k * unit).find((m) => m <= perPixel * most);
  return { metres, px: metres / perPixel };
}

// --- the map on the schools board ------------------------------------------------------------

const MAP = { view: null, fitted: true, size: "", tiles: new Map(), markers: new Map(), onOpen: null };

function placedSchools() {
  return [...SCHOOLS.values()].filter((s) => s.lat !== null && s.lon !== null);
}

// Called on every render: the markers' colours follow the sites and alarms; the view is fitted
// to the schools until the officer moves or zooms it. Drawn only when visible (its size known).
function renderSchoolMap(sites, alarmSites, selected, onOpen) {
  const box = document.getElementById("school-map");
  const placed = placedSchools();
  box.hidden = placed.length === 0;
  MAP.onOpen = onOpen;
  if (!placed.length || !box.clientWidth) return;
  if (!box.firstChild) buildMap(box);
  const area = box.querySelector(".map-area");
  const size = area.clientWidth + "x" + area.clientHeight;
  if (!MAP.view || (MAP.fitted && size !== MAP.size)) fit(area);
  const layer = box.querySelector(".map-markers");
  for (const school of placed) {
    let marker = MAP.markers.get(school.site_id);
    if (!marker) {
      marker = el("button", { type: "button", dataset: { site: school.site_id }, onclick: () => MAP.onOpen(school.site_id) },
        el("span", { class: "dot" }), el("span", { class: "marker-name" }, school.name));
      MAP.markers.set(school.site_id, marker);
      layer.append(marker);
    }
    const site = sites.get(school.site_id);
    const state = alarmSites.has(school.site_id) ? "alarm" : (site ? site.state : "unknown");
    marker.className = "marker " + state + (selected === school.site_id ? " selected" : "");
    marker.dataset.state = state;
    marker.title = school.name + " (" + school.site_id + "): " + t(state === "alarm" ? "alarm_state" : state);
  }
  labelMap(box, placed.length);
  placeMap();
}

function buildMap(box) {
  const area = el("div", { class: "map-area" }, el("div", { class: "map-tiles" }), el("div", { class: "map-markers" }));
  const zoom = (step) => {
    const v = MAP.view, w = area.clientWidth, h = area.clientHeight;
    const z = Math.max(0, Math.min(MAX_ZOOM, v.z + step));
    const k = 2 ** (z - v.z);
    MAP.view = { z, left: Math.round((v.left + w / 2) * k - w / 2), top: Math.round((v.top + h / 2) * k - h / 2) };
    MAP.fitted = false;
    placeMap();
  };
  box.classList.toggle("plan", !ME.map.tiles);
  box.append(area,
    el("div", { class: "map-controls" },
      el("button", { type: "button", class: "zoom-in", onclick: () => zoom(1) }, "+"),
      el("button", { type: "button", class: "zoom-out", onclick: () => zoom(-1) }, "−"),
      el("button", { type: "button", class: "fit", onclick: () => { MAP.fitted = true; fit(area); placeMap(); } }, "⤢")),
    el("div", { class: "map-scale" }, el("span", { class: "bar" }), el("span", { class: "label" })),
    el("div", { class: "map-legend" }, ["online", "offline", "unknown", "alarm"].map((s) =>
      el("span", { class: "legend " + s }, el("span", { class: "dot" }), el("span", { class: "legend-name", dataset: { state: s } })))),
    el("div", { class: "map-note" }));
  area.addEventListener("pointerdown", (e) => {  // dragging moves the view
    if (e.button !== 0 || e.target.closest(".marker")) return;
    const start = { x: e.clientX, y: e.clientY, left: MAP.view.left, top: MAP.view.top };
    area.setPointerCapture(e.pointerId);
    let frame = 0;
    const move = (m) => {
      MAP.view = { z: MAP.view.z, left: start.left - (m.clientX - start.x), top: start.top - (m.clientY - start.y) };
      MAP.fitted = false;
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; placeMap(); });  // once a frame
    };
    const up = () => { area.removeEventListener("pointermove", move); area.removeEventListener("pointerup", up); };
    area.addEventListener("pointermove", move);
    area.addEventListener("pointerup", up);
  });
  window.addEventListener("resize", () => { if (MAP.fitted && MAP.view && area.clientWidth) { fit(area); placeMap(); } });
}

function fit(area) {
  MAP.size = area.clientWidth + "x" + area.clientHeight;
  MAP.view = fitView(placedSchools(), area.clientWidth, area.clientHeight);
}

// The texts, in the officer's language (re-done on a change of language).
function labelMap(box, placed) {
  box.querySelector(".zoom-in").title = t("zoom_in");
  box.querySelector(".zoom-out").title = t("zoom_out");
  box.querySelector(".fit").title = t("fit");
  for (const name of box.querySelectorAll(".legend-name")) {
    name.textContent = t(name.dataset.state === "alarm" ? "alarm_state" : name.dataset.state);
  }
  const unplaced = SCHOOLS.size - placed;
  box.querySelector(".map-note").replaceChildren(
    ME.map.tiles ? ME.map.attribution : t("plan"),
    unplaced ? el("span", { class: "unplaced" }, " · " + t("unplaced") + ": " + unplaced) : null);
}

// Tiles and markers where the view puts them; a tile already shown is kept, not loaded again.
function placeMap() {
  const box = document.getElementById("school-map");
  const area = box.querySelector(".map-area");
  const [w, h, v] = [area.clientWidth, area.clientHeight, MAP.view];
  if (ME.map.tiles) {
    const layer = box.querySelector(".map-tiles");
    const wanted = new Map(tilesFor(v, w, h).map((tile) => [tile.z + "/" + (tile.left + v.left) / TILE + "/" + tile.y, tile]));
    for (const [key, img] of MAP.tiles) {
      if (!wanted.has(key)) { img.remove(); MAP.tiles.delete(key); }
    }
    for (const [key, tile] of wanted) {
      let img = MAP.tiles.get(key);
      if (!img) {
        img = el("img", { class: "tile", alt: "", draggable: "false", dataset: { tile: tile.z + "/" + tile.x + "/" + tile.y } });
        img.addEventListener("error", () => { img.hidden = true; });  // the plan's grid shows through
        img.src = tileUrl(ME.map.tiles, tile);
        MAP.tiles.set(key, img);
        layer.append(img);
      }
      img.style.left = tile.left + "px";
      img.style.top = tile.top + "px";
    }
  }
  area.style.backgroundPosition = -v.left + "px " + -v.top + "px";  // the plan's grid moves too
  let inView = 0;
  for (const school of placedSchools()) {
    const p = mercator(school.lat, school.lon, v.z);
    const [x, y] = [p.x - v.left, p.y - v.top];
    const marker = MAP.markers.get(school.site_id);
    marker.style.left = x + "px";
    marker.style.top = y + "px";
    marker.classList.toggle("flip", x > w - 320);  // the name (at most 300 px) to the left, in view
    if (x >= 0 && x < w && y >= 0 && y < h) inView++;
  }
  box.classList.toggle("crowded", inView > CROWDED);  // names only of alarms and the selected
  const scale = scaleFor(v, w, h, 120);
  box.querySelector(".map-scale .bar").style.width = scale.px + "px";
  box.querySelector(".map-scale .label").textContent =
    scale.metres >= 1000 ? scale.metres / 1000 + " " + t("km") : scale.metres + " " + t("m");
  box.dataset.zoom = v.z;
}
