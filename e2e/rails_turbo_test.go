package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/cablecar/cablecar/actioncable"
)

// A Rails app (testdata/turboapp, Debian's Rails 6.1) whose cable.yml says
// `adapter: cablecar`: Turbo's broadcasts and remote_connections…disconnect
// leave it through the gem, to Cablecar's admin API or to Redis.

const turboSecret = "turbo-rails-verifier-key"

// turboApp is testdata/turboapp under Puma behind c's port, publishing
// through c's admin API, or Redis when redisURL is set.
func startTurboApp(t *testing.T, port int, adminURL, redisURL string) *Puma {
	t.Helper()
	requireRails(t)
	root := RepoRoot(t)
	env := map[string]string{
		"RUBYLIB":              filepath.Join(root, "ruby", "lib"),
		"TURBO_STREAMS_SECRET": turboSecret,
		"TURBO_JS":             turboRailsJS(t),
		"CABLECAR_ADMIN_URL":   adminURL,
	}
	if redisURL != "" {
		env["TURBOAPP_REDIS_URL"] = redisURL
	}
	return StartPuma(t, PumaOptions{Port: port, Rackup: filepath.Join(root, "testdata", "turboapp", "config.ru"), Env: env})
}

// turboRailsJS is turbo-rails' browser bundle (Turbo, its
// <turbo-cable-stream-source> and @rails/actioncable), fetched by
// e2e/jsdeps.sh when missing.
func turboRailsJS(t *testing.T) string {
	t.Helper()
	actionCableJS(t) // fetches the packages when missing
	path := filepath.Join(RepoRoot(t), "e2e", ".jsdeps", "node_modules", "@hotwired", "turbo-rails", "app", "assets", "javascripts", "turbo.js")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("turbo-rails' bundle: %v (run make jsdeps)", err)
	}
	return path
}

type turboEvent struct {
	Type       string `json:"type"`
	Identifier string `json:"identifier"`
	Connection string `json:"connection"`
	User       string `json:"user"`
}

func turboEvents(t *testing.T, p *Puma) []turboEvent {
	t.Helper()
	var log struct {
		Events []turboEvent `json:"events"`
	}
	acGet(t, p, "/_events", &log)
	return log.Events
}

// turboLogin signs name in and returns the session cookie.
func turboLogin(t *testing.T, base, name string) http.Header {
	t.Helper()
	resp, err := http.Get(base + "/login?name=" + url.QueryEscape(name))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := http.Header{}
	for _, ck := range resp.Cookies() {
		h.Add("Cookie", ck.Name+"="+ck.Value)
	}
	if resp.StatusCode != 200 || h.Get("Cookie") == "" {
		t.Fatalf("login %s: %d", name, resp.StatusCode)
	}
	return h
}

func turboPost(t *testing.T, target string, h http.Header) {
	t.Helper()
	req, _ := http.NewRequest("POST", target, nil)
	req.Header = h.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST %s: %d %s", target, resp.StatusCode, body)
	}
}

func turboGet(t *testing.T, target string) {
	t.Helper()
	resp, err := http.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", target, resp.StatusCode)
	}
}

// In headless Chromium with turbo-rails' JS: a page with
// turbo_stream_from, whose subscribe Cablecar's fast lane answers (the app
// never sees it); a model created in the app is broadcast as a Turbo Stream
// through the cablecar adapter and the admin API, and appears on the page.
// Then the user is banned: remote_connections.where(current_user:).disconnect
// closes their connection through Cablecar (admin /close by channel).
func TestRailsCableTurboBrowser(t *testing.T) {
	t.Parallel()
	port := FreePort(t)
	c := StartCablecar(t, CablecarOptions{Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
		Config: acConfig(map[string]any{"actioncable.turbo_streams_secret": turboSecret})})
	p := startTurboApp(t, port, c.AdminURL, "")
	b := StartBrowser(t)

	page := b.NewPage("turbo-rails")
	page.Do("signing in", chromedp.Navigate(c.URL+"/login?name=ann"))
	page.Do("opening the room", chromedp.Navigate(c.URL+"/rooms/1"))
	page.WaitJS("the stream source connected", `(document.querySelector("turbo-cable-stream-source") || {hasAttribute: () => false}).hasAttribute("connected")`)

	// bob posts from another session; the app's after_create broadcasts
	// later (Active Job), through ActionCable.server.broadcast.
	turboPost(t, c.URL+"/rooms/1/messages?body=hello+from+Rails", turboLogin(t, c.URL, "bob"))
	page.WaitJS("the Turbo Stream appended", `[...document.querySelectorAll("#messages .message")].some(e => e.textContent === "bob: hello from Rails")`)
	page.Screenshot("rails-turbo-stream.png")

	var ann string
	for _, ev := range turboEvents(t, p) {
		if ev.Type == "subscribe" {
			t.Fatalf("a subscribe reached the app (%+v): the fast lane answers Turbo alone", ev)
		}
		if ev.Type == "open" && ev.User == "ann" {
			ann = ev.Connection
		}
	}
	if ann == "" {
		t.Fatalf("the app saw no open event of ann's connection: %+v", turboEvents(t, p))
	}

	turboGet(t, c.URL+"/ban?name=ann")
	WaitFor(t, wsWait, "ann's connection closed", func() bool {
		for _, ev := range turboEvents(t, p) {
			if ev.Type == "close" && ev.Connection == ann {
				return true
			}
		}
		return false
	})
	// @rails/actioncable reconnects, is refused (banned), and stops.
	page.WaitJS("the stream source disconnected", `!document.querySelector("turbo-cable-stream-source").hasAttribute("connected")`)
	page.Screenshot("rails-turbo-banned.png")
}

// Through Redis, across two nodes: the gem's RedisPublisher writes the
// Turbo Stream verbatim and the disconnect as the envelope's kind 'k'
// (close every subscriber of a channel, docs/scaling.md), which the Go side
// honours on the node holding the connection, and nowhere else.
func TestRailsCableRemoteDisconnectThroughRedis(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	port := FreePort(t)
	node := func() *Cablecar {
		return StartCablecar(t, CablecarOptions{Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
			Config: acConfig(map[string]any{"actioncable.turbo_streams_secret": turboSecret, "broker.url": "redis://" + r.Addr})})
	}
	n1, n2 := node(), node()
	startTurboApp(t, port, n1.AdminURL, "redis://"+r.Addr)

	dial := func(c *Cablecar, name string) *acClient {
		t.Helper()
		ws, resp, err := DialWS(t, c.URL+"/cable", turboLogin(t, c.URL, name), actioncable.V1Name, "actioncable-unsupported")
		if err != nil {
			t.Fatalf("dial as %s: %v %s", name, err, describeResponse(resp))
		}
		cl := &acClient{WSClient: ws, t: t}
		cl.expect(wsWait, map[string]any{"type": "welcome"})
		return cl
	}
	// Both follow room 2's Turbo stream, signed as turbo-rails signs it.
	gid := func(model, id string) string {
		return b64.EncodeToString([]byte("gid://turbo-app/" + model + "/" + id)) // GlobalID#to_param
	}
	signed := actioncable.NewStreamVerifier(turboSecret).Sign(gid("Room", "2") + ":messages")
	ident, _ := json.Marshal(map[string]string{"channel": "Turbo::StreamsChannel", "signed_stream_name": signed})
	cat, dan := dial(n2, "cat"), dial(n1, "dan")
	cat.subscribe(string(ident))
	dan.subscribe(string(ident))

	turboPost(t, n1.URL+"/rooms/2/messages?body=first", turboLogin(t, n1.URL, "eve"))
	want := `<turbo-stream action="append" target="messages"><template><p class="message">eve: first</p></template></turbo-stream>`
	for _, cl := range []*acClient{cat, dan} {
		cl.expect(wsWait, map[string]any{"identifier": string(ident), "message": want})
	}

	// The open event's reply subscribed cat's connection to
	// action_cable/<gid of User cat>; the ban broadcasts a disconnect there.
	turboGet(t, n1.URL+"/ban?name=cat")
	cat.expect(wsWait, map[string]any{"type": "disconnect", "reason": "remote", "reconnect": true})
	if code, reason := cat.ExpectClose(wsWait); code != 1000 || reason != "remote" {
		t.Fatalf("cat closed %d %q, want 1000 remote", code, reason)
	}
	// dan, on the node that published, is left alone and still follows.
	turboPost(t, n1.URL+"/rooms/2/messages?body=second", turboLogin(t, n1.URL, "eve"))
	dan.expect(wsWait, map[string]any{"identifier": string(ident),
		"message": strings.Replace(want, "first", "second", 1)})
}
