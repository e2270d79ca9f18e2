package e2e

import (
	"encoding/json"
	"net/http"
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

	// remote_connections.where(current_user: carol).disconnect: the
	// adapter closes the channel the runtime subscribed her connection to
	// on open; alice's connection stays.
	carol := dial("carol")
	carol.expect(gemWait, map[string]any{"type": "welcome"})
	carol.subscribe(lobby)
	if code, body, err := get(web, c.URL+"/ban?name=carol", gemWait); err != nil || code != http.StatusOK {
		t.Fatalf("GET /ban: %d %q %v", code, body, err)
	}
	carol.expect(gemWait, map[string]any{"type": "disconnect", "reason": "remote", "reconnect": true})
	carol.ExpectClose(gemWait)
	alice.subscribe(lobby) // she unsubscribed above; her connection is still up
	alice.command("message", lobby, `{"action":"ping"}`)
	alice.expect(gemWait, messageFrame(lobby, map[string]any{"pong": true}))

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
