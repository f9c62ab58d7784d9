"use strict";
// Small helpers shared by the console's scripts. Every text reaches the page through
// textContent (el's string children), never innerHTML: names and locations come from boxes
// and may be hostile.

const ME = { user: "", role: "", csrf: "", timezone: "UTC", escalate_s: [30, 60], map: { tiles: null, attribution: "" } };
const SCHOOLS = new Map();  // site id -> the schools file's entry (name, address, district, lat, lon)

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (method !== "GET") {
    options.headers["Content-Type"] = "application/json";
    options.headers["X-CSRF-Token"] = ME.csrf;
    options.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, options);
  if (response.status === 401) { location.href = "/login"; throw new Error("log in"); }
  const doc = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(doc.error || response.statusText);
  return doc;
}

// An RFC 3339 UTC time in the centre's zone and the officer's language. The formatter is made
// once per language: making one costs more than rendering a whole row.
const FORMATS = new Map();
function fmtTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (isNaN(date)) return "—";
  const lang = currentLang();
  if (!FORMATS.has(lang)) {
    FORMATS.set(lang, new Intl.DateTimeFormat(lang, {
      timeZone: ME.timezone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }));
  }
  return FORMATS.get(lang).format(date);
}

function flash(message) {
  const node = document.getElementById("flash");
  node.textContent = message;
  setTimeout(() => { if (node.textContent === message) node.textContent = ""; }, 8000);
}

function keyOf(alarm) { return alarm.site_id + "/" + alarm.event_id; }

// A school as the officer knows it: its name from the schools file with the site id beside it,
// or the site id alone for a site the file does not list.
function schoolLabel(siteId) {
  const school = SCHOOLS.get(siteId);
  return el("span", { class: "school" }, school ? [el("span", { class: "school-name" }, school.name), " "] : null,
    el("span", { class: "site-id" }, siteId));
}

// The same as plain text, for a message.
function schoolText(siteId) {
  const school = SCHOOLS.get(siteId);
  return school ? school.name + " (" + siteId + ")" : siteId;
}
