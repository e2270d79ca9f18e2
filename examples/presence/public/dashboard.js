// The dashboard: one WebSocket that hears every join and leave of the
// "devices" presence (Cablecar-Presence-Events), and a snapshot of who is
// online now (/devices.json, from the admin API's GET /presence).
//
// The socket opens first and what it hears is held until the snapshot is
// shown; then it is applied in order. Each message says what became true
// at its time and nothing is missed in between, so the dots end right
// whichever came first.
"use strict";

const list = document.getElementById("devices");
const stateLine = document.getElementById("state");
const rows = new Map(); // device id -> its <li>

// Every change of a dot, in order: {id, online, at} (for the curious, and
// for the end-to-end test that checks a dot never flickers).
window.dotChanges = [];

function row(id, name) {
  let li = rows.get(id);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = id;
    li.dataset.online = "false";
    const dot = document.createElement("span");
    dot.className = "dot";
    const label = document.createElement("span");
    label.className = "name";
    const small = document.createElement("span");
    small.className = "id";
    small.textContent = id;
    li.append(dot, label, small);
    list.append(li);
    rows.set(id, li);
  }
  if (name) li.querySelector(".name").textContent = name;
  return li;
}

function setOnline(id, online, name) {
  const li = row(id, name);
  const now = online ? "true" : "false";
  if (li.dataset.online === now) return;
  li.dataset.online = now;
  window.dotChanges.push({ id, online, at: Date.now() });
}

function apply(msg) {
  if (msg.presence === "join") setOnline(msg.id, true, msg.info && msg.info.name);
  else if (msg.presence === "leave") setOnline(msg.id, false);
}

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/watch");
  let held = [];
  ws.onmessage = (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch (_) { return; }
    if (!msg.presence) return;
    if (held) held.push(msg); else apply(msg);
  };
  ws.onopen = async () => {
    try {
      const res = await fetch("/devices.json", { cache: "no-store" });
      if (!res.ok) throw new Error(await res.text());
      const snap = await res.json();
      const online = new Set(snap.online);
      for (const d of snap.devices) setOnline(d.id, online.has(d.id), d.name);
      for (const msg of held) apply(msg);
      held = null;
      stateLine.textContent = "live";
      document.body.dataset.live = "true";
    } catch (err) {
      stateLine.textContent = "presence unavailable: " + err.message;
      ws.close();
    }
  };
  ws.onclose = () => {
    // The dots are what was last known; a new snapshot comes with the
    // next socket.
    document.body.dataset.live = "false";
    stateLine.textContent = "reconnecting…";
    setTimeout(connect, 1000);
  };
}

connect();
