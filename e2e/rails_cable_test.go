package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/fasthttp/websocket"

	"github.com/cablecar/cablecar/actioncable"
)

// TestRailsActionCable runs a Rails app's own ActionCable code
// (testdata/cablerails: ApplicationCable::Connection, channel classes,
// Debian's Rails 6.1) behind real Cablecar through the gem's
// Cablecar::ActionCable::Middleware, under Puma, and talks to it as
// @rails/actioncable does: current_user from the session cookie, a refused
// connection, rejected subscriptions, a perform that transmits and
// broadcasts, state kept across events, and unsubscribed on unsubscribe
// and on close.
func TestRailsActionCable(t *testing.T) {
	t.Parallel()
	requireRails(t)
	const secret = "rails-cable-e2e-secret"
	port := FreePort(t)
	c := StartCablecar(t, CablecarOptions{
		Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
		Config:   map[string]any{"callback.secret": secret},
	})
	root := RepoRoot(t)
	p := StartPuma(t, PumaOptions{Port: port, Rackup: filepath.Join(root, "testdata", "cablerails", "config.ru"), Env: map[string]string{
		"RUBYLIB":                  filepath.Join(root, "ruby", "lib"),
		"CABLECAR_CALLBACK_SECRET": secret,
		"CABLECAR_ADMIN_URL":       c.AdminURL,
	}})
	web := &http.Client{Timeout: gemWait}

	dial := func(name string) *acClient {
		t.Helper()
		var h http.Header
		if name != "" {
			h = railsLogin(t, web, c.URL, name)
		}
		ws, resp, err := DialWS(t, c.URL+"/cable", h, actioncable.V1Name, "actioncable-unsupported")
		if err != nil {
			t.Fatalf("dial as %q: %v %s", name, err, describeResponse(resp))
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != actioncable.V1Name {
			t.Fatalf("101 names %q, want %q", got, actioncable.V1Name)
		}
		return &acClient{WSClient: ws, t: t}
	}
	record := func() (lines []string, finds int) {
		var r struct {
			Record []string `json:"record"`
			Finds  int      `json:"finds"`
		}
		acGet(t, p, "/_record", &r)
		return r.Record, r.Finds
	}
	waitRecord := func(want ...string) {
		t.Helper()
		WaitFor(t, gemWait, "the app to record "+strconv.Quote(want[0]), func() bool {
			got, _ := record()
			for _, w := range want {
				if !slices.Contains(got, w) {
					return false
				}
			}
			return true
		})
	}

	// connect's reject_unauthorized_connection: no session.
	anon := dial("")
	anon.expect(gemWait, map[string]any{"type": "disconnect", "reason": "unauthorized", "reconnect": false})
	anon.ExpectClose(gemWait)

	alice := dial("alice")
	alice.expect(gemWait, map[string]any{"type": "welcome"})
	bob := dial("bob")
	bob.expect(gemWait, map[string]any{"type": "welcome"})
	lobby := acID("ChatChannel", map[string]any{"room": "lobby"})
	alice.subscribe(lobby)
	bob.subscribe(lobby)
	waitRecord("subscribed alice lobby", "subscribed bob lobby")

	// speak: a transmit to alice and a broadcast to the room; the broadcast
	// leaves during the request, so it may come first.
	alice.command("message", lobby, `{"action":"speak","text":"hi bob"}`)
	said := messageFrame(lobby, map[string]any{"user": "alice", "text": "hi bob"})
	expectEither(t, alice, messageFrame(lobby, map[string]any{"said": float64(1)}), said)
	bob.expect(gemWait, said)

	// The count lives in a state attribute; the channel object is new for
	// each event.
	alice.command("message", lobby, `{"action":"speak","text":"again"}`)
	again := messageFrame(lobby, map[string]any{"user": "alice", "text": "again"})
	expectEither(t, alice, messageFrame(lobby, map[string]any{"said": float64(2)}), again)
	bob.expect(gemWait, again)
	alice.command("message", lobby, `{"action":"whoami"}`)
	alice.expect(gemWait, messageFrame(lobby, map[string]any{"name": "alice", "room": "lobby", "said": float64(2)}))

	// Events that do not read current_user do not look the user up.
	_, before := record()
	for range 3 {
		bob.command("message", lobby, `{"action":"ping"}`)
		bob.expect(gemWait, messageFrame(lobby, map[string]any{"pong": true}))
	}
	if _, after := record(); after != before {
		t.Fatalf("three pings looked the user up %d times, want none", after-before)
	}

	// Rejections: reject in subscribed, and a channel with a periodic timer.
	for _, id := range []string{acID("ChatChannel", map[string]any{"room": "attic"}), acID("ClockChannel", nil)} {
		alice.command("subscribe", id, "")
		alice.expect(gemWait, map[string]any{"identifier": id, "type": "reject_subscription"})
	}
	if !strings.Contains(p.Output(), "ClockChannel uses periodically") {
		t.Errorf("the refused timer is not logged; puma said:\n%s", p.Output())
	}

	// unsubscribed runs for an unsubscribe, with the state the channel kept.
	alice.command("unsubscribe", lobby, "")
	waitRecord("unsubscribed alice lobby")

	// And for what a closed connection still held, then disconnect.
	bob.CloseWith(gemWait, websocket.CloseNormalClosure, "")
	waitRecord("unsubscribed bob lobby", "disconnect bob")

	// connect ran once per connection, at the accept.
	lines, _ := record()
	for _, name := range []string{"alice", "bob"} {
		if n := countOf(lines, "connect "+name); n != 1 {
			t.Errorf("connect %s ran %d times, want 1: %q", name, n, lines)
		}
	}
}

// railsLogin signs in at a test app's /login and returns the Cookie
// header of its session.
func railsLogin(t *testing.T, web *http.Client, base, name string) http.Header {
	t.Helper()
	resp, err := web.Get(base + "/login?name=" + name)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := http.Header{}
	for _, ck := range resp.Cookies() {
		h.Add("Cookie", ck.Name+"="+ck.Value)
	}
	if resp.StatusCode != 200 || h.Get("Cookie") == "" {
		t.Fatalf("login %s: %d, cookies %v", name, resp.StatusCode, resp.Cookies())
	}
	return h
}

// expectEither reads two frames and checks they are a and b, in either
// order.
func expectEither(t *testing.T, cl *acClient, a, b map[string]any) {
	t.Helper()
	want := []string{jsonOf(a), jsonOf(b)}
	got := []string{jsonOf(cl.next(gemWait)), jsonOf(cl.next(gemWait))}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("got frames %q, want %q in any order", got, want)
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func countOf(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// TestRailsActionCableBrowser: two users chat in headless Chromium with
// the real @rails/actioncable, served by the Rails app through Cablecar,
// each in a browser context of its own (its own session cookie), the
// channels being the app's ActionCable classes run by the gem.
func TestRailsActionCableBrowser(t *testing.T) {
	t.Parallel()
	requireRails(t)
	js := actionCableJS(t)
	const secret = "rails-cable-browser-secret"
	port := FreePort(t)
	c := StartCablecar(t, CablecarOptions{
		Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
		Config:   map[string]any{"callback.secret": secret, "actioncable.ping_interval": "1s"},
	})
	root := RepoRoot(t)
	StartPuma(t, PumaOptions{Port: port, Rackup: filepath.Join(root, "testdata", "cablerails", "config.ru"), Env: map[string]string{
		"RUBYLIB":                   filepath.Join(root, "ruby", "lib"),
		"CABLECAR_CALLBACK_SECRET":  secret,
		"CABLECAR_ADMIN_URL":        c.AdminURL,
		"CABLERAILS_ACTIONCABLE_JS": js,
	}})
	b := StartBrowser(t)

	pages := map[string]*Page{}
	for _, name := range []string{"alice", "bob"} {
		page := b.NewPage("rails-" + name)
		page.Do("opening the chat as "+name, chromedp.Navigate(c.URL+"/chat?name="+name))
		page.WaitJS(name+"'s subscription confirmed", `window.connected === 1`)
		pages[name] = page
	}
	pages["alice"].Do("alice speaks", chromedp.Evaluate[chromedp.Void](`void say("hello bob")`))
	pages["bob"].WaitJS("bob hears alice", `window.got.some(m => m.user === "alice" && m.text === "hello bob")`)
	pages["bob"].Do("bob answers", chromedp.Evaluate[chromedp.Void](`void say("hi alice")`))
	pages["alice"].WaitJS("alice hears bob", `window.got.some(m => m.user === "bob" && m.text === "hi alice")`)
	// Each got the count of what they said, from the channel's state.
	pages["alice"].WaitJS("alice's count", `window.got.some(m => m.said === 1)`)
	pages["alice"].Screenshot("rails-actioncable-alice.png")
	pages["bob"].Screenshot("rails-actioncable-bob.png")
}

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
