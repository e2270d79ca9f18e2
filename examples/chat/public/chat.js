// The chat page: the browser's own WebSocket, reconnecting with backoff and
// resuming where it stopped. User text only ever reaches the page through
// textContent.
"use strict";

(() => {
  const BACKOFF_FIRST = 500;   // ms before the first retry…
  const BACKOFF_MAX = 10000;   // …doubling up to this

  const $ = (id) => document.getElementById(id);
  const state = $("state");
  const list = $("messages");

  let room = "";
  let nick = "";
  let ws = null;        // the current socket, if any
  let position = "";    // "<epoch>:<offset>" of the last broadcast shown, to resume from
  let wanted = false;   // joined, and not left: keep reconnecting
  let attempt = 0;      // failed connections since the last open
  let retryTimer = null;
  let countdown = null;

  function setState(name, label) {
    state.dataset.state = name;
    state.textContent = label || name;
    $("send").disabled = name !== "online";
  }

  function clearTimers() {
    clearTimeout(retryTimer);
    clearInterval(countdown);
    retryTimer = countdown = null;
  }

  function connect() {
    clearTimers();
    setState("connecting");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // Back after a drop, it asks to resume: Cablecar first sends what the
    // room said meanwhile, each message once, in order.
    const since = position ? `?since=${position}` : "";
    const url = `${scheme}//${location.host}/chat/${encodeURIComponent(room)}/${encodeURIComponent(nick)}${since}`;
    const sock = new WebSocket(url);
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      attempt = 0;
      setState("online");
    };
    sock.onmessage = (event) => {
      if (ws === sock) receive(event.data);
    };
    sock.onclose = () => {
      if (ws !== sock) return;
      ws = null;
      $("online").hidden = true;
      if (wanted) retry();
      else setState("offline");
    };
  }

  // Waits a random time between half and all of the current ceiling (so a
  // crowd dropped at once does not come back at once), then reconnects.
  function retry() {
    const ceiling = Math.min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    attempt++;
    const due = Date.now() + delay;
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      setState("reconnecting", `reconnecting in ${seconds}s`);
    };
    tick();
    countdown = setInterval(tick, 250);
    retryTimer = setTimeout(connect, delay);
  }

  function receive(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
      // A broadcast comes in Cablecar's envelope, with its position in the
      // room's history: {"channel", "epoch", "offset", "data"}.
      if (msg.channel !== undefined && typeof msg.data === "string") {
        if (msg.epoch !== undefined) position = `${msg.epoch}:${msg.offset}`;
        msg = JSON.parse(msg.data);
      }
    } catch {
      msg = { type: "error", text: String(raw) };
    }
    switch (msg.type) {
      case "history": // on a first connect, or when a resume could not be: it replaces the list
        list.replaceChildren();
        for (const m of msg.messages) show(m);
        if (msg.resumed) {
          show({ type: "notice", text: "Reconnected too late to catch up: these are the room's latest messages." });
        }
        break;
      case "count":
        $("count").textContent = String(msg.online);
        $("online").hidden = false;
        $("who").textContent = msg.nicks && msg.nicks.length ? `Here: ${msg.nicks.join(", ")}` : "";
        break;
      case "message":
      case "join":
      case "leave":
      case "error":
        show(msg);
        break;
    }
  }

  function span(className, text) {
    const el = document.createElement("span");
    el.className = className;
    el.textContent = text;
    return el;
  }

  function show(msg) {
    const li = document.createElement("li");
    li.className = msg.type;
    if (msg.nick !== undefined) li.dataset.nick = msg.nick;
    if (msg.at) {
      const at = new Date(msg.at);
      li.append(span("at", at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
    }
    switch (msg.type) {
      case "message":
        li.append(span("nick", msg.nick), span("text", msg.text));
        break;
      case "join":
        li.append(span("text", `${msg.nick} joined`));
        break;
      case "leave":
        li.append(span("text", `${msg.nick} left`));
        break;
      default:
        li.append(span("text", msg.text));
    }
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(li);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function join(event) {
    event.preventDefault();
    room = $("room").value.trim();
    nick = $("nick").value.trim();
    const length = [...nick].length;
    if (!/^[A-Za-z0-9_-]{1,32}$/.test(room) || length < 1 || length > 32) return;
    localStorage.setItem("chat.room", room);
    localStorage.setItem("chat.nick", nick);
    $("join").hidden = true;
    $("room-view").hidden = false;
    $("room-title").textContent = `#${room} as ${nick}`;
    list.replaceChildren();
    $("who").textContent = "";
    position = ""; // a fresh list: nothing to resume
    wanted = true;
    attempt = 0;
    connect();
    $("text").focus();
  }

  function leave() {
    wanted = false;
    clearTimers();
    const sock = ws;
    ws = null;
    if (sock) sock.close(1000, "left");
    setState("offline");
    $("online").hidden = true;
    $("room-view").hidden = true;
    $("join").hidden = false;
  }

  function say(event) {
    event.preventDefault();
    const input = $("text");
    if (!ws || ws.readyState !== WebSocket.OPEN || input.value.trim() === "") return;
    ws.send(input.value);
    input.value = "";
  }

  $("room").value = localStorage.getItem("chat.room") || "lobby";
  $("nick").value = localStorage.getItem("chat.nick") || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
  $("join").addEventListener("submit", join);
  $("say").addEventListener("submit", say);
  $("leave").addEventListener("click", leave);
  // Back online after a network outage: try now rather than at the next tick.
  window.addEventListener("online", () => {
    if (wanted && !ws) connect();
  });
  setState("offline");
})();
