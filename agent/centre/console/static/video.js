"use strict";
// Video at the console: an alarm's clips (MP4 remuxed at the centre, played by the browser
// itself) with their verification state and the signed originals, and live view over Media
// Source Extensions with the picture's age shown.

const VIDEO = { key: null, players: new Map() };

function clipBase(alarm, clip) {
  return "/media/clips/" + keyOf(alarm) + "/" + clip.camera_id;
}

function clipBox(alarm, clip) {
  const box = el("div", { class: "clip", dataset: { camera: clip.camera_id, state: clip.state } });
  fillClip(box, alarm, clip);
  return box;
}

function fillClip(box, alarm, clip) {
  const base = clipBase(alarm, clip);
  const verdict = el("span", { class: "verdict verdict-" + clip.state, title: clip.problem }, t(clip.state));
  const head = el("p", {}, verdict, " ", clip.camera_id, " · " + clip.segments + " " + t("segments"),
    clip.problem && clip.state !== "verified" ? el("span", { class: "problem" }, " — " + clip.problem) : null);
  const parts = [head];
  if (clip.problem !== "still arriving") {
    parts.push(el("video", { class: "clip-video", src: base + ".mp4", controls: true, muted: true,
                             autoplay: true, playsinline: true, preload: "auto" }),
      el("p", { class: "downloads" }, t("download") + ": ",
        el("a", { href: base + ".ts", download: "" }, clip.camera_id + ".ts"), " · ",
        el("a", { href: base + ".verify.json", download: "" }, "verify.json")));
  }
  box.dataset.state = clip.state;
  box.replaceChildren(...parts);
}

// Called on every render of the selected alarm: players are kept, never rebuilt, so a clip
// that plays goes on playing when the alarm is acknowledged or another clip arrives.
window.showAlarmVideo = function (alarm) {
  const area = document.getElementById("alarm-video");
  const key = alarm ? keyOf(alarm) : null;
  if (key !== VIDEO.key) {
    stopLive();
    area.replaceChildren();
    VIDEO.key = key;
    if (!alarm) return;
    area.append(el("h3", {}, t("clips")), el("div", { class: "clips" }), el("div", { class: "live-buttons" }),
      el("div", { class: "live-area" }));
  }
  if (!alarm) return;
  const list = area.querySelector(".clips");
  for (const clip of alarm.clips) {
    const box = list.querySelector('.clip[data-camera="' + CSS.escape(clip.camera_id) + '"]');
    if (!box) list.append(clipBox(alarm, clip));
    else if (box.dataset.state !== clip.state) fillClip(box, alarm, clip);
  }
  if (!alarm.clips.length && !list.children.length) list.append(el("p", { class: "empty" }, t("no_clips")));
  else list.querySelector(".empty")?.remove();
  liveButtons(area.querySelector(".live-buttons"), alarm.site_id, area.querySelector(".live-area"));
};

function liveButtons(slot, site, area) {
  const cameras = Object.keys((STATE.sites.get(site)?.health || {}).cameras || {});
  if (slot.dataset.cameras === cameras.join(",")) return;
  slot.dataset.cameras = cameras.join(",");
  slot.replaceChildren(...cameras.map((camera) => el("button", {
    class: "live-button", dataset: { camera }, onclick: () => startLive(site, camera, area)
  }, t("live") + ": " + camera)));
}

let LIVE = null; // the one live player: { abort, video }

function stopLive() {
  if (LIVE) { LIVE.abort.abort(); LIVE = null; }
}

async function startLive(site, camera, area) {
  stopLive();
  let started;
  try { started = await api("POST", "/api/sites/" + site + "/live", { camera_id: camera, seconds: 120 }); }
  catch (e) { flash(e.message); return; }
  const video = el("video", { class: "live-video", muted: true, autoplay: true, playsinline: true });
  video.muted = true;
  const label = el("span", { class: "latency" }, "…");
  area.replaceChildren(el("p", {}, t("live") + ": " + site + " / " + camera + " · ", label), video);
  const abort = new AbortController();
  LIVE = { abort, video };
  playLive(started.stream, video, label, abort.signal).catch((e) => {
    if (!abort.signal.aborted) label.textContent = t("failed") + ": " + e.message;
  });
}

// The stream is records: 4-byte header length, JSON header, 4-byte body length, body
// (fragmented MP4). Appended in "sequence" mode; each record's capture time is remembered
// where it lands on the timeline, so the picture's age is now minus when it was filmed.
async function playLive(url, video, label, signal) {
  const source = new MediaSource();
  video.src = URL.createObjectURL(source);
  await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
  const response = await fetch(url, { signal });
  if (!response.ok) throw new Error(response.statusText);
  const reader = response.body.getReader();
  const marks = [], queue = [];
  let buffer = new Uint8Array(0), sink = null;
  const edge = () => (sink.buffered.length ? sink.buffered.end(sink.buffered.length - 1) : 0);
  const pump = () => {
    if (!sink || sink.updating || !queue.length) return;
    const { header, body } = queue.shift();
    marks.push({ at: edge(), start_ms: header.start_ms });
    sink.appendBuffer(body);
  };
  const timer = setInterval(() => {
    const mark = marks.filter((m) => m.at <= video.currentTime + 0.05).pop();
    if (!mark || mark.start_ms === null || video.readyState < 2) return;
    const age = Date.now() - (mark.start_ms + (video.currentTime - mark.at) * 1000);
    video.dataset.latencyMs = String(Math.round(age));
    label.textContent = t("latency") + " " + (age / 1000).toFixed(2) + " s";
  }, 250);
  signal.addEventListener("abort", () => clearInterval(timer));
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const joined = new Uint8Array(buffer.length + value.length);
    joined.set(buffer);
    joined.set(value, buffer.length);
    buffer = joined;
    for (;;) {
      if (buffer.length < 4) break;
      const view = new DataView(buffer.buffer, buffer.byteOffset);
      const headLength = view.getUint32(0);
      if (buffer.length < 8 + headLength) break;
      const bodyLength = view.getUint32(4 + headLength);
      if (buffer.length < 8 + headLength + bodyLength) break;
      const header = JSON.parse(new TextDecoder().decode(buffer.subarray(4, 4 + headLength)));
      const body = buffer.slice(8 + headLength, 8 + headLength + bodyLength);
      buffer = buffer.slice(8 + headLength + bodyLength);
      if (!sink) {
        sink = source.addSourceBuffer('video/mp4; codecs="' + header.codec + '"');
        sink.mode = "sequence";
        sink.addEventListener("updateend", () => {
          // Stay at the live edge: behind by more than a segment, jump to the newest one.
          const newest = marks[marks.length - 1];
          if (newest && edge() - video.currentTime > 1.5) video.currentTime = newest.at;
          if (video.paused) video.play().catch(() => null);
          pump();
        });
      }
      queue.push({ header, body });
      pump();
    }
  }
  clearInterval(timer);
}
