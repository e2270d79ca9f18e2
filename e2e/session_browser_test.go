package e2e

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The real @anycable/web (fetched by make jsdeps) in headless Chromium,
// unchanged, speaking actioncable-v1-ext-json: after its node is killed
// and started again on the same address, it comes back with its sid and
// its session is restored (SPEC §10) — its subscription receives again
// without a subscribe, and the app hears of nothing.

const anycablePage = `<!doctype html>
<html><head><meta charset="utf-8"><title>anycable</title>
<script type="importmap">{"imports": {
  "@anycable/web": "/m/@anycable/web/index.js",
  "@anycable/core": "/m/@anycable/core/index.js",
  "nanoevents": "/m/nanoevents/index.js"}}</script></head>
<body><pre id="log"></pre>
<script type="module">
import { createCable } from "@anycable/web";
const params = new URLSearchParams(location.search);
const log = (s) => { document.getElementById("log").textContent += s + "\n"; };
window.got = []; window.connects = [];
const cable = createCable(params.get("cable"), {protocol: "actioncable-v1-ext-json"});
cable.on("connect", (ev) => { window.connects.push(ev); log("connect " + JSON.stringify(ev)); });
cable.on("disconnect", (ev) => log("disconnect " + JSON.stringify(ev && ev.reason)));
const channel = cable.subscribeTo("ChatChannel", {room: params.get("room")});
channel.on("message", (m) => { window.got.push(m); log("message " + JSON.stringify(m)); });
window.channel = channel;
</script></body></html>`

func TestSessionRestoreBrowser(t *testing.T) {
	t.Parallel()
	actionCableJS(t) // fetches the packages when missing
	modules := filepath.Join(RepoRoot(t), "e2e", ".jsdeps", "node_modules")
	r := StartRedis(t)
	p := startACApp(t)
	mux := http.NewServeMux()
	mux.Handle("/m/", http.StripPrefix("/m/", http.FileServer(http.Dir(modules))))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write([]byte(anycablePage))
	})
	site := httptest.NewServer(mux)
	t.Cleanup(site.Close)
	cfg := sessConfig(map[string]any{
		"websocket.allowed_origins": []string{site.URL},
		"broker.url":                r.URL,
		"broker.lease_ttl":          leaseTTL.String(),
		"actioncable.session_ttl":   "60s",
	})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	WaitFor(t, 15*time.Second, "/readyz", func() bool { return c.AdminStatus("/readyz") == 200 })
	b := StartBrowser(t)
	room := uniqueID(t)

	page := b.NewPage("anycable")
	page.Do("opening the page", chromedp.Navigate(site.URL+"/?room="+room+"&cable="+wsURL(c.URL)+"/cable"))
	page.WaitJS("connected", `window.connects.length === 1`)
	stream := "ChatChannel:" + room
	// The subscription is confirmed once a broadcast gets through.
	WaitFor(t, wsWait, "the first broadcast", func() bool {
		MustAdminPost(t, c, "/publish", map[string]any{"channel": stream, "data": `{"n":1}`}, "")
		return poll(300*time.Millisecond, func() bool { return EvalJS[bool](page, `window.got.some(m => m.n === 1)`) })
	})
	conns := acAllConns(t, p)
	if len(conns) != 1 {
		t.Fatalf("the app saw %d connections, want 1", len(conns))
	}
	before := len(acEvents(t, p, conns[0]))

	// kill -9, and the node comes back on the same address.
	c.Kill()
	cfg["listen"] = c.Addr
	c2 := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	page.WaitJSWithin(30*time.Second, "reconnected with its session restored",
		`window.connects.length === 2 && window.connects[1].restored === true`)
	MustAdminPost(t, c2, "/publish", map[string]any{"channel": stream, "data": `{"n":2}`}, "")
	page.WaitJS("a broadcast after the restore", `window.got.some(m => m.n === 2)`)
	page.Screenshot("anycable-session-restored.png")

	// The killed node's record is settled by the new one (its lease
	// lapsed): the session goes on, so no node_lost close either.
	WaitFor(t, leaseTTL+20*time.Second, "the killed node reaped", func() bool {
		_, m := c2.Admin("/metrics")
		return strings.Contains(m, "cablecar_node_lost_connections_total 1")
	})
	// The app saw one connection: one accept, no new subscribe, no close.
	if got := acAllConns(t, p); len(got) != 1 {
		t.Fatalf("the app saw connections %v after the restore, want only %s", got, conns[0])
	}
	var log acLog
	acGet(t, p, "/_events?conn="+conns[0], &log)
	if len(log.Accepts) != 1 {
		t.Fatalf("%d accepts", len(log.Accepts))
	}
	for _, ev := range acEvents(t, p, conns[0])[before:] {
		if ev["type"] == "subscribe" || ev["type"] == "close" {
			t.Fatalf("the app got %v after the restore", ev)
		}
	}
	if strings.Contains(c2.Logs(), "sid=") {
		t.Fatal("a sid reached the log")
	}
}
