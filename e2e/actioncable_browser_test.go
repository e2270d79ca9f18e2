package e2e

import (
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cablecar/cablecar/actioncable"
)

// The real @rails/actioncable (fetched by make jsdeps) in headless
// Chromium, unchanged, against Cablecar and testdata/acapp: it connects,
// subscribes, performs, receives a broadcast, sees a rejection, and after
// Cablecar restarts reconnects and resubscribes by itself.

const acPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>actioncable</title></head>
<body><pre id="log"></pre>
<script src="/actioncable.js"></script>
<script>
// A short stale threshold so that the reconnect after a restart is
// tried within seconds; Cablecar's pings (every 300 ms here) keep a live
// connection fresh.
ActionCable.ConnectionMonitor.staleThreshold = 1;
window.got = []; window.connected = 0; window.disconnected = 0; window.rejected = 0;
const params = new URLSearchParams(location.search);
const consumer = ActionCable.createConsumer(params.get("cable"));
const log = (s) => { document.getElementById("log").textContent += s + "\n"; };
window.chat = consumer.subscriptions.create({channel: "ChatChannel", room: params.get("room")}, {
  connected() { window.connected++; log("connected"); },
  disconnected() { window.disconnected++; log("disconnected"); },
  received(data) { window.got.push(data); log("received " + JSON.stringify(data)); },
});
window.subscribeRejected = () => consumer.subscriptions.create({channel: "RejectChannel"}, {
  rejected() { window.rejected++; log("rejected"); },
});
</script></body></html>`

// actionCableJS is the path of @rails/actioncable's browser build,
// fetched by e2e/jsdeps.sh when missing.
func actionCableJS(t *testing.T) string {
	t.Helper()
	root := RepoRoot(t)
	path := filepath.Join(root, "e2e", ".jsdeps", "node_modules", "@rails", "actioncable", "app", "assets", "javascripts", "actioncable.js")
	if _, err := os.Stat(path); err != nil {
		out, err := exec.Command("sh", filepath.Join(root, "e2e", "jsdeps.sh")).CombinedOutput()
		if err != nil {
			t.Fatalf("make jsdeps: %v\n%s", err, out)
		}
	}
	return path
}

func TestActionCableBrowser(t *testing.T) {
	t.Parallel()
	js := actionCableJS(t)
	p := startACApp(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/actioncable.js", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, js) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write([]byte(acPage))
	})
	site := httptest.NewServer(mux)
	t.Cleanup(site.Close)
	cfg := acConfig(map[string]any{"websocket.allowed_origins": []string{site.URL}})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	b := StartBrowser(t)
	room := uniqueID(t)

	page := b.NewPage("actioncable")
	page.Do("opening the page", chromedp.Navigate(site.URL+"/?room="+room+"&cable="+wsURL(c.URL)+"/cable"))
	page.WaitJS("the subscription confirmed", `window.connected === 1`)

	page.Do("performing echo", chromedp.Evaluate[chromedp.Void](`void chat.perform("echo", {n: 1})`))
	page.WaitJS("the echo transmitted back", `window.got.some(m => m.action === "echo" && m.n === 1)`)

	MustAdminPost(t, c, "/publish", map[string]any{"channel": "ChatChannel:" + room, "data": `{"hello":"browser"}`}, "")
	page.WaitJS("the broadcast", `window.got.some(m => m.hello === "browser")`)

	page.Do("subscribing to a channel that rejects", chromedp.Evaluate[chromedp.Void](`void subscribeRejected()`))
	page.WaitJS("the rejection", `window.rejected === 1`)
	page.Screenshot("actioncable-browser.png")

	// Cablecar restarts: the client is told server_restart with reconnect,
	// and comes back and resubscribes by itself.
	c.Signal(syscall.SIGTERM)
	page.WaitJS("the disconnect", `window.disconnected >= 1`)
	if code, err := c.Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("cablecar after SIGTERM: exit %d, %v", code, err)
	}
	cfg["listen"] = c.Addr
	c2 := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	page.WaitJSWithin(30*time.Second, "reconnected and resubscribed", `window.connected === 2`)
	MustAdminPost(t, c2, "/publish", map[string]any{"channel": "ChatChannel:" + room, "data": `{"hello":"again"}`}, "")
	page.WaitJS("a broadcast after the restart", `window.got.some(m => m.hello === "again")`)
	page.Screenshot("actioncable-browser-reconnected.png")
}

// Turbo Streams: turbo-rails' bundled JS (Turbo and its
// <turbo-cable-stream-source>, @rails/actioncable inside) subscribes with
// a signed stream name, which Cablecar's fast lane confirms alone; a
// Turbo Stream published to that name changes the page.
func TestActionCableBrowserTurbo(t *testing.T) {
	t.Parallel()
	actionCableJS(t) // fetches the packages when missing
	turboJS := filepath.Join(RepoRoot(t), "e2e", ".jsdeps", "node_modules", "@hotwired", "turbo-rails", "app", "assets", "javascripts", "turbo.js")
	p := startACApp(t)
	stream := "Z2lkOi8vYXBwL1Jvb20vMQ:messages-" + uniqueID(t)
	signed := actioncable.NewStreamVerifier(acTurboSecret).Sign(stream)

	var cableURL string
	mux := http.NewServeMux()
	mux.HandleFunc("/turbo.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript")
		http.ServeFile(w, r, turboJS)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><html><head><meta charset="utf-8">
<meta name="action-cable-url" content="%s">
<script type="module" src="/turbo.js"></script></head>
<body><div id="messages"></div>
<turbo-cable-stream-source channel="Turbo::StreamsChannel" signed-stream-name="%s"></turbo-cable-stream-source>
</body></html>`, html.EscapeString(cableURL), html.EscapeString(signed))
	})
	site := httptest.NewServer(mux)
	t.Cleanup(site.Close)
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream,
		Config: acConfig(map[string]any{"websocket.allowed_origins": []string{site.URL}})})
	cableURL = wsURL(c.URL) + "/cable"
	b := StartBrowser(t)

	page := b.NewPage("turbo")
	page.Do("opening the page", chromedp.Navigate(site.URL+"/"))
	page.WaitJS("the stream source connected", `document.querySelector("turbo-cable-stream-source").hasAttribute("connected")`)
	turboStream := `<turbo-stream action="append" target="messages"><template><p id="m1">hello from Cablecar</p></template></turbo-stream>`
	MustAdminPost(t, c, "/publish", map[string]any{"channel": stream, "data": turboStream}, "")
	page.WaitJS("the Turbo Stream applied", `(document.getElementById("m1") || {}).textContent === "hello from Cablecar"`)
	page.Screenshot("actioncable-browser-turbo.png")
	// No webhook: the app saw the accept and nothing else.
	for _, id := range acAllConns(t, p) {
		for _, ev := range acEvents(t, p, id) {
			if ev["type"] == "subscribe" {
				t.Fatalf("event %v reached the app; the fast lane answers alone", ev)
			}
		}
	}
}

func acAllConns(t *testing.T, p *Puma) []string {
	var conns struct {
		Conns []string `json:"conns"`
	}
	acGet(t, p, "/_conns", &conns)
	return conns.Conns
}
