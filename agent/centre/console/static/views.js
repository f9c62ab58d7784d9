"use strict";
// Rendering: the alarm queue, one alarm, the schools board and a school's card (the map is
// map.js), the audit log and the users.

// The alarm's level for the queue: closed, acked, test, new, escalated (1 or 2).
function alarmLevel(alarm, now) {
  if (alarm.closed) return "closed";
  if (alarm.ack) return "acked";
  if (alarm.test) return "test";
  const age = (now - Date.parse(alarm.received_at)) / 1000;
  const passed = ME.escalate_s.filter((s) => age >= s).length;
  return passed ? "escalated-" + passed : "new";
}

function badge(level) {
  const label = { closed: "closed", acked: "acked", test: "test", new: "new" }[level] || "escalated";
  return el("span", { class: "badge " + level }, t(label));
}

function boxState(ack) {
  if (!ack) return null;
  if (ack.box_at === null) return el("span", { class: "box-waiting" }, t("box_waiting"));
  if (ack.box_ok) return el("span", { class: "box-confirmed" }, t("box_confirmed") + " " + fmtTime(ack.box_at));
  return el("span", { class: "box-refused" }, t("box_refused") + ": " + ack.box_reason);
}

function pressedCell(alarm) {
  return el("span", {}, fmtTime(alarm.pressed_at),
    alarm.clock_synced ? null : el("span", { class: "warn clock-warn", title: t("clock_unsynced") }, " ⚠"));
}

function renderAlarmList(alarms, selected, onSelect) {
  const now = Date.now();
  const rows = [...alarms.values()].sort((a, b) => Date.parse(b.received_at) - Date.parse(a.received_at));
  const list = document.getElementById("alarm-list");
  if (!rows.length) { list.replaceChildren(el("p", { class: "empty" }, t("no_alarms"))); return; }
  list.replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, ["state", "school", "button", "location", "kind", "pressed", "arrived"]
      .map((k) => el("th", {}, t(k))))),
    el("tbody", {}, rows.map((a) => {
      const level = alarmLevel(a, now);
      return el("tr", { class: "alarm " + level + (keyOf(a) === selected ? " selected" : ""),
                        dataset: { key: keyOf(a) }, onclick: () => onSelect(keyOf(a)) },
        el("td", {}, badge(level)), el("td", { class: "site" }, schoolLabel(a.site_id)),
        el("td", {}, a.button_id), el("td", { class: "location" }, a.location),
        el("td", {}, t(a.kind)), el("td", {}, pressedCell(a)), el("td", {}, fmtTime(a.received_at)));
    }))));
}

function renderAlarmDetail(alarm, actions) {
  const aside = document.getElementById("alarm-info");
  if (!alarm) { aside.replaceChildren(); return; }
  const level = alarmLevel(alarm, Date.now());
  const school = SCHOOLS.get(alarm.site_id) || {};
  const facts = [
    ["school", schoolLabel(alarm.site_id)], ["address", school.address], ["district", school.district],
    ["button", alarm.button_id], ["location", alarm.location],
    ["kind", t(alarm.kind)], ["pressed", pressedCell(alarm)], ["arrived", fmtTime(alarm.received_at)]];
  const body = [el("h2", {}, badge(level), " ", schoolText(alarm.site_id), " · ", alarm.location),
    el("dl", {}, facts.filter(([, v]) => v).map(([k, v]) => [el("dt", {}, t(k)), el("dd", { class: "fact-" + k }, v)])),
    alarm.clock_synced ? null : el("p", { class: "warn" }, t("clock_unsynced")),
    alarm.test_refused ? el("p", { class: "warn" }, t("test_refused")) : null,
    alarm.detail ? el("p", { class: "detail" }, alarm.detail) : null];
  if (alarm.ack) {
    body.push(el("p", { class: "acked-by" }, t("acked") + " " + fmtTime(alarm.ack.at) + " " +
      t("by") + " " + alarm.ack.by + ": ", el("q", {}, alarm.ack.reason)), el("p", {}, boxState(alarm.ack)));
  } else {
    const reason = el("input", { class: "ack-reason", maxlength: 500, placeholder: t("reason") });
    body.push(el("form", { class: "ack-form", onsubmit: (e) => { e.preventDefault(); actions.ack(alarm, reason.value); } },
      reason, el("button", { class: "ack-button", type: "submit" }, t("acknowledge"))));
  }
  if (alarm.closed) {
    body.push(el("p", { class: "closed-by" }, t("closed") + " " + fmtTime(alarm.closed.at) + " " +
      t("by") + " " + alarm.closed.by + ": ", el("q", {}, alarm.closed.note)));
  } else if (alarm.ack) {
    const note = el("input", { class: "close-note", maxlength: 500, placeholder: t("note") });
    body.push(el("form", { class: "close-form", onsubmit: (e) => { e.preventDefault(); actions.close(alarm, note.value); } },
      note, el("button", { class: "close-button", type: "submit" }, t("close"))));
  }
  aside.replaceChildren(...body.filter(Boolean));
}

function healthCells(h) {
  if (!h) return [el("td", { colspan: 7 }, "—")];
  const outbox = h.outbox || {};
  const states = (m) => Object.entries(m || {}).map(([id, s]) => id + ": " + s).join(", ");
  return [el("td", { class: "health-at" }, fmtTime(h.at)),
    el("td", {}, h.disk_free_mb === null ? "—" : Math.round(h.disk_free_mb) + " MB"),
    el("td", {}, h.cpu_temp_c === null ? "—" : h.cpu_temp_c.toFixed(1) + " °C"),
    el("td", {}, ["alarm", "unconfirmed", "clip"].map((k) => k + " " + (outbox[k] ?? "—")).join(", ")),
    el("td", {}, states(h.cameras)), el("td", {}, states(h.buttons)),
    el("td", { class: h.clock_synced ? "" : "warn" }, t(h.clock_synced ? "synced" : "not_synced"))];
}

function stateText(site) {
  return site.since ? t(site.state) + " " + t("since") + " " + fmtTime(site.since) : t(site.state);
}

// The board: every site, by name; a click on a row (or on its marker) opens the school's card.
function renderSchools(sites, actions, selected, onSelect) {
  const label = (id) => (SCHOOLS.get(id) || {}).name || id;
  const rows = [...sites.values()].sort((a, b) =>
    label(a.site_id).localeCompare(label(b.site_id), currentLang()) || a.site_id.localeCompare(b.site_id));
  const heads = ["school", "state", "health", "disk", "temperature", "outbox", "cameras", "buttons", "clock", "test_mode", "actions"];
  document.getElementById("school-table").replaceChildren(
    el("thead", {}, el("tr", {}, heads.map((k) => el("th", {}, t(k))))),
    el("tbody", {}, rows.map((s) => el("tr", { class: "site-row " + s.state + (s.site_id === selected ? " selected" : ""),
                                               dataset: { site: s.site_id }, onclick: () => onSelect(s.site_id) },
      el("td", { class: "school-cell" }, schoolLabel(s.site_id),
        SCHOOLS.has(s.site_id) ? el("div", { class: "address" }, SCHOOLS.get(s.site_id).address) : null),
      el("td", { class: "site-state" }, stateText(s)),
      healthCells(s.health),
      el("td", { class: "test-until" }, s.test_until && Date.parse(s.test_until) > Date.now() ? t("until") + " " + fmtTime(s.test_until) : "—"),
      el("td", {}, el("button", { class: "ping", onclick: () => actions.command(s.site_id, "ping") }, t("ping")),
        ME.role === "supervisor" ? [
          el("button", { class: "test-on", onclick: () => actions.command(s.site_id, "test_mode", { on: true, minutes: 30 }) }, t("test_on")),
          el("button", { class: "test-off", onclick: () => actions.command(s.site_id, "test_mode", { on: false }) }, t("test_off"))] : null)))));
}

// The selected school: what the schools file says of it, its state, and its open alarms, each
// a click away from the alarm's page.
function renderSchoolCard(siteId, sites, alarms, openAlarm) {
  const card = document.getElementById("school-card");
  card.hidden = !siteId;
  if (!siteId) { card.replaceChildren(); return; }
  const school = SCHOOLS.get(siteId) || {};
  const site = sites.get(siteId);
  const now = Date.now();
  const open = [...alarms.values()].filter((a) => a.site_id === siteId && !a.closed)
    .sort((a, b) => Date.parse(b.received_at) - Date.parse(a.received_at));
  const facts = [["site_id", siteId], ["address", school.address], ["district", school.district],
    ["coordinates", school.lat != null ? school.lat.toFixed(5) + ", " + school.lon.toFixed(5) : null],
    ["state", site ? stateText(site) : t("unknown")]];
  card.dataset.site = siteId;
  card.replaceChildren(el("h2", { class: "school-name" }, school.name || siteId),
    el("dl", {}, facts.filter(([, v]) => v).map(([k, v]) => [el("dt", {}, t(k)), el("dd", { class: "fact-" + k }, v)])),
    open.length ? el("ul", { class: "school-alarms" }, open.map((a) => el("li", {},
      badge(alarmLevel(a, now)), " ", fmtTime(a.received_at), " · ", a.location, " ",
      el("button", { class: "open-alarm", dataset: { key: keyOf(a) }, onclick: () => openAlarm(keyOf(a)) }, t("open_alarm")))))
      : el("p", { class: "empty" }, t("no_open_alarms")));
}

function renderAudit(doc) {
  const v = doc.verdict;
  document.getElementById("audit-verdict").replaceChildren(el("span", { class: v.ok ? "chain-ok" : "chain-broken" },
    (v.ok ? t("chain_ok") : t("chain_broken") + ": " + v.problem) + " · " + v.entries + " " + t("entries") + " · " + t("head") + " " + v.head));
  document.getElementById("audit-table").replaceChildren(
    el("thead", {}, el("tr", {}, ["time", "actor", "action", "school", "target", "detail"].map((k) => el("th", {}, t(k))))),
    el("tbody", {}, doc.entries.slice().reverse().map((e) => el("tr", { class: "audit-entry", dataset: { action: e.action } },
      el("td", {}, fmtTime(e.at)), el("td", {}, e.actor), el("td", {}, e.action), el("td", {}, e.site_id ? schoolLabel(e.site_id) : ""),
      el("td", {}, e.target), el("td", { class: "detail" }, JSON.stringify(e.detail))))));
}

function renderUsers(users) {
  document.getElementById("user-table").replaceChildren(
    el("thead", {}, el("tr", {}, ["user", "role", "created"].map((k) => el("th", {}, t(k))))),
    el("tbody", {}, users.map((u) => el("tr", {}, el("td", {}, u.name), el("td", {}, t(u.role)), el("td", {}, fmtTime(u.created_at))))));
}
