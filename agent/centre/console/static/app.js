"use strict";
// The console page: who is logged in, the event stream (Server-Sent Events: the server pushes,
// the page never polls), the alarm queue with sound and escalation, and the officers' actions.

const STATE = { alarms: new Map(), sites: new Map(), selected: null, school: null, tab: "alarms" };
let audio = null;

// The new state of an alarm comes back on the event stream, in order, to every console alike.
const ACTIONS = {
  async ack(alarm, reason) {
    try { await api("POST", "/api/alarms/" + keyOf(alarm) + "/ack", { reason }); }
    catch (e) { flash(e.message); }
  },
  async close(alarm, note) {
    try { await api("POST", "/api/alarms/" + keyOf(alarm) + "/close", { note }); }
    catch (e) { flash(e.message); }
  },
  async command(site, name, body) {
    try { await api("POST", "/api/sites/" + site + "/" + name, body); flash(t("sent") + ": " + name + " → " + schoolText(site)); }
    catch (e) { flash(t("failed") + ": " + e.message); }
  }
};

function upsertAlarm(alarm) {
  const known = STATE.alarms.has(keyOf(alarm));
  STATE.alarms.set(keyOf(alarm), alarm);
  if (!known && !alarm.test && !alarm.ack) STATE.selected = STATE.selected || keyOf(alarm);
  render();
}

// Re-render, keeping what the officer is typing in the detail's fields.
function render() {
  renderAlarmList(STATE.alarms, STATE.selected, (key) => { STATE.selected = key; render(); });
  const typing = {};
  for (const cls of ["ack-reason", "close-note"]) {
    const input = document.querySelector("#alarm-detail ." + cls);
    if (input) typing[cls] = [input.value, document.activeElement === input];
  }
  const shown = document.getElementById("alarm-detail").dataset.key;
  renderAlarmDetail(STATE.alarms.get(STATE.selected), ACTIONS);
  document.getElementById("alarm-detail").dataset.key = STATE.selected || "";
  if (shown === STATE.selected) {
    for (const [cls, [value, focused]] of Object.entries(typing)) {
      const input = document.querySelector("#alarm-detail ." + cls);
      if (input) { input.value = value; if (focused) input.focus(); }
    }
  }
  window.showAlarmVideo(STATE.alarms.get(STATE.selected));
  renderBoard();
}

// The schools board: the map (or plan), the selected school's card, the table.
function renderBoard() {
  const now = Date.now();
  const alarmSites = new Set([...STATE.alarms.values()]
    .filter((a) => ["new", "escalated-1", "escalated-2"].includes(alarmLevel(a, now))).map((a) => a.site_id));
  renderSchoolMap(STATE.sites, alarmSites, STATE.school, (site) => {
    selectSchool(site);
    const row = document.querySelector('tr.site-row[data-site="' + CSS.escape(site) + '"]');
    if (row) row.scrollIntoView({ block: "nearest" });
  });
  renderSchoolCard(STATE.school, STATE.sites, STATE.alarms, (key) => {
    STATE.selected = key;
    showTab("alarms");
    render();
  });
  renderSchools(STATE.sites, ACTIONS, STATE.school, selectSchool);
}

function selectSchool(site) {
  STATE.school = site;
  renderBoard();
}

// Unacknowledged real alarms: the page blinks (CSS) and beeps until someone acknowledges.
function alerting() {
  const now = Date.now();
  return [...STATE.alarms.values()].some((a) => ["new", "escalated-1", "escalated-2"].includes(alarmLevel(a, now)));
}

function beep() {
  if (!audio || audio.state !== "running") return;
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.frequency.value = 880;
  gain.gain.value = 0.2;
  osc.connect(gain).connect(audio.destination);
  osc.start();
  osc.stop(audio.currentTime + 0.25);
}

function connect() {
  const state = document.getElementById("link-state");
  const source = new EventSource("/api/events");
  const show = (up) => {
    state.className = up ? "up" : "down";
    state.dataset.i18n = up ? "connected" : "disconnected";  // kept on a change of language
    state.textContent = t(state.dataset.i18n);
  };
  source.addEventListener("open", () => show(true));
  source.addEventListener("error", () => show(false));
  source.addEventListener("snapshot", (e) => {
    const doc = JSON.parse(e.data);
    STATE.alarms = new Map(doc.alarms.map((a) => [keyOf(a), a]));
    STATE.sites = new Map(doc.sites.map((s) => [s.site_id, s]));
    render();
  });
  source.addEventListener("alarm", (e) => upsertAlarm(JSON.parse(e.data)));
  source.addEventListener("site", (e) => {
    const site = JSON.parse(e.data);
    STATE.sites.set(site.site_id, site);
    render();
  });
  source.addEventListener("command", (e) => {
    const result = JSON.parse(e.data);
    flash(schoolText(result.site_id) + " · " + result.name + ": " + (result.ok ? "OK" : result.reason));
  });
  source.addEventListener("resync", () => { source.close(); connect(); });
  source.addEventListener("logout", () => { location.href = "/login"; });
}

function showTab(tab) {
  STATE.tab = tab;
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== tab;
  for (const button of document.querySelectorAll(".tab")) button.classList.toggle("active", button.dataset.tab === tab);
  if (tab === "schools") renderBoard();  // the map needs its size: drawn once visible
  if (tab === "audit") api("GET", "/api/audit").then(renderAudit).catch((e) => flash(e.message));
  if (tab === "users") api("GET", "/api/users").then(renderUsers).catch((e) => flash(e.message));
}

async function main() {
  Object.assign(ME, await api("GET", "/api/me"));
  for (const school of (await api("GET", "/api/schools")).schools) SCHOOLS.set(school.site_id, school);
  document.body.classList.toggle("supervisor", ME.role === "supervisor");
  document.getElementById("whoami").textContent = ME.user + " (" + ME.role + ")";
  document.getElementById("zone").textContent = ME.timezone;
  document.getElementById("lang-slot").append(languagePicker(() => { render(); showTab(STATE.tab); }));
  translatePage();
  for (const button of document.querySelectorAll(".tab")) button.addEventListener("click", () => showTab(button.dataset.tab));
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "/api/logout").catch(() => null);
    location.href = "/login";
  });
  document.getElementById("user-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("POST", "/api/users", { name: document.getElementById("new-user").value,
        role: document.getElementById("new-role").value, password: document.getElementById("new-password").value });
      e.target.reset();
      showTab("users");
    } catch (err) { flash(err.message); }
  });
  document.addEventListener("click", () => {
    if (!audio) audio = new AudioContext();
    if (audio.state !== "running") audio.resume();
    document.getElementById("sound-hint").hidden = true;
  });
  showTab("alarms");
  connect();
  // Escalation is a matter of age: re-drawn every second on every open console.
  setInterval(() => {
    const on = alerting();
    document.body.classList.toggle("alerting", on);
    if (on) beep();
    renderAlarmList(STATE.alarms, STATE.selected, (key) => { STATE.selected = key; render(); });
  }, 1000);
}

main();
