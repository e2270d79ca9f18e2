package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cablecar/cablecar/auth"
	"github.com/fasthttp/websocket"
)

// The WebSocket tests run the binary against one Puma running
// testdata/app (its /ws side is ws.rb) and share it: the app keeps what it
// saw per connection id, and each test uses paths, tags and channels of its
// own, so they cannot see each other. Tests that need a setting of their own
// start their own Cablecar in front of the same Puma.
//
// TestWebSocket runs six groups (Accept, Handshake here; Events, Limits,
// Admin, Lifecycle in ws_*_test.go); each test is a function named for its
// path, so TestWebSocket/Accept/Request is testAcceptRequest. Run one, or a
// group, with
//
//	go test -race -count=1 -run 'TestWebSocket/Accept/Request$' ./e2e/
//	go test -race -count=1 -run 'TestWebSocket/Events' ./e2e/
//
// A new test is a function added to its group's list.

const (
	wsSecret = "s3cret"
	// wsWait bounds what should happen at once: a reply, a webhook.
	wsWait = 5 * time.Second
)

// wsEnv is the Puma every WebSocket test shares, and the Cablecar in front of
// it with the default settings plus callback signing.
type wsEnv struct {
	p *Puma
	c *Cablecar
}

// cablecar starts another binary in front of the shared Puma with config
// over the harness's (no signing unless config asks).
func (e *wsEnv) cablecar(t *testing.T, config map[string]any) *Cablecar {
	t.Helper()
	return StartCablecar(t, CablecarOptions{Upstream: e.p.Upstream, Config: config})
}

func TestWebSocket(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{"callback.secret": wsSecret}})
	env := &wsEnv{p: p, c: c}

	for _, group := range []struct {
		name  string
		tests []wsTest
	}{
		{"Accept", wsAcceptTests},
		{"Handshake", wsHandshakeTests},
		{"Events", wsEventTests},
		{"Limits", wsLimitTests},
		{"Admin", wsAdminTests},
		{"Lifecycle", wsLifecycleTests},
	} {
		t.Run(group.name, func(t *testing.T) {
			t.Parallel()
			for _, test := range group.tests {
				t.Run(test.name, func(t *testing.T) {
					t.Parallel()
					test.run(t, env)
				})
			}
		})
	}
}

// wsTest is one subtest of a TestWebSocket group: its name in the test's
// path and the function that runs it.
type wsTest struct {
	name string
	run  func(*testing.T, *wsEnv)
}

// target is path with the query built from key, value pairs, in order.
func target(path string, kv ...string) string {
	if len(kv) == 0 {
		return path
	}
	var q []string
	for i := 0; i+1 < len(kv); i += 2 {
		q = append(q, url.QueryEscape(kv[i])+"="+url.QueryEscape(kv[i+1]))
	}
	return path + "?" + strings.Join(q, "&")
}

var channelCounter atomic.Uint64

// channel is a channel name unique within the run.
func channel(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, channelCounter.Add(1))
}

// verifySignature checks a Cablecar-Signature made with wsSecret.
func verifySignature(t *testing.T, what, header string, payload []byte) {
	t.Helper()
	if err := auth.NewSigner([]string{wsSecret}).Verify(header, payload, time.Now(), time.Minute); err != nil {
		t.Errorf("%s: Cablecar-Signature %q does not verify: %v", what, header, err)
	}
}

// refused dials and fails unless the handshake is refused with a response;
// it returns that response with its body (the first KiB).
func refused(t *testing.T, rawURL string, header http.Header, protocols ...string) (*http.Response, string) {
	t.Helper()
	ws, resp, err := DialWS(t, rawURL, header, protocols...)
	if err == nil {
		ws.Conn.Close()
		t.Fatalf("handshake to %s succeeded (%d), want it refused", rawURL, resp.StatusCode)
	}
	if resp == nil {
		t.Fatalf("handshake to %s: %v, with no HTTP response", rawURL, err)
	}
	if !errors.Is(err, websocket.ErrBadHandshake) || resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("handshake to %s: %v (status %d)", rawURL, err, resp.StatusCode)
	}
	body, _ := io.ReadAll(resp.Body) // the library kept the first KiB
	return resp, string(body)
}

// --- accept -----------------------------------------------------------------

// wsAcceptTests are TestWebSocket/Accept/<name>, each the function
// testAccept<name>; they start in this order and run in parallel.
var wsAcceptTests = []wsTest{
	{"Request", testAcceptRequest},
	{"FirstMessageFromBody", testAcceptFirstMessageFromBody},
	{"SubscribeThenPublish", testAcceptSubscribeThenPublish},
	{"SetCookieRelayed", testAcceptSetCookieRelayed},
	{"SubprotocolChosen", testAcceptSubprotocolChosen},
	{"SubprotocolNotOffered", testAcceptSubprotocolNotOffered},
	{"Reject401Relayed", testAcceptReject401Relayed},
	{"Fail500Relayed", testAcceptFail500Relayed},
	{"SignatureRotation", testAcceptSignatureRotation},
	{"Redirect302Relayed", testAcceptRedirect302Relayed},
	{"NoAcceptHeader403", testAcceptNoAcceptHeader403},
	{"AppDown503", testAcceptAppDown503},
	{"SlowAccept504", testAcceptSlowAccept504},
	{"SlowButInTimeAccept", testAcceptSlowButInTimeAccept},
	{"AcceptWith201", testAcceptAcceptWith201},
}

// What the app receives when asked to accept, and that it is signed.
func testAcceptRequest(t *testing.T, e *wsEnv) {
	tag := NewTag(t)
	tgt := target("/ws/chat/accept", "x", "1 2", "tag", tag)
	h := http.Header{}
	h.Set("Cablecar-Foo", "forged")
	h.Set("Cablecar-Connection-Id", "forged-id")
	h.Set("Cablecar-Upgrade", "forged")
	h.Set("Cookie", "sid=s1")
	h.Set("Authorization", "Bearer abc")
	h.Set("X-Custom", "yes")
	d := &websocket.Dialer{Subprotocols: []string{"p1"}, EnableCompression: true}
	ws, resp, err := DialWSWith(t, d, e.c.URL+tgt, h)
	if err != nil {
		t.Fatalf("handshake: %v%s", err, describeResponse(resp))
	}
	defer ws.Conn.Close()
	id := ConnID(t, e.p, tag)
	if id == "" || id == "forged-id" || strings.ContainsAny(id, " ,\r\n") {
		t.Fatalf("connection id %q", id)
	}
	l := AppLog(t, e.p, id)
	if len(l.Accepts) != 1 {
		t.Fatalf("the app got %d accept requests for %s, want 1", len(l.Accepts), id)
	}
	a := l.Accepts[0]
	if a.Method != "GET" || a.PathAndQuery() != tgt {
		t.Errorf("the app got %s %s, want GET %s", a.Method, a.PathAndQuery(), tgt)
	}
	want := map[string]string{
		"Cablecar-Upgrade":       "websocket",
		"Cablecar-Connection-Id": id,
		"Cookie":                 "sid=s1",
		"Authorization":          "Bearer abc",
		"X-Custom":               "yes",
		"Host":                   e.c.Addr,
		"Sec-Websocket-Protocol": "p1", // the offer, so the app can choose
	}
	for name, v := range want {
		if got, _ := a.Header(name); got != v {
			t.Errorf("accept request %s: %q, want %q", name, got, v)
		}
	}
	for _, name := range []string{"Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Cablecar-Foo"} {
		if v, ok := a.Header(name); ok {
			t.Errorf("accept request has %s: %q; it must be removed", name, v)
		}
	}
	if v, _ := a.Header("Connection"); strings.Contains(strings.ToLower(v), "upgrade") {
		t.Errorf("accept request has Connection: %q", v)
	}
	sig, _ := a.Header("Cablecar-Signature")
	verifySignature(t, "accept request", sig, acceptPayload(tgt, a))
	// Not in the contract either way; shown for whoever reads the run.
	xff, _ := a.Header("X-Forwarded-For")
	t.Logf("accept request X-Forwarded-For %q; 101 headers %v", xff, resp.Header)

	// A second connection has an id of its own.
	_, id2 := ConnectWS(t, e.c, e.p, "/ws/chat/accept", nil)
	if id2 == id {
		t.Fatalf("two connections got the same id %q", id)
	}
}

func testAcceptFirstMessageFromBody(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, target("/ws/chat/first", "first", "hello {id}"), nil)
	ws.ExpectText(wsWait, "hello "+id)
	ws.Send("echo:second")
	ws.ExpectText(wsWait, "second")
}

// Cablecar-Subscribe (with spaces around the comma) takes effect, and
// the connection's channels are in its webhooks.
func testAcceptSubscribeThenPublish(t *testing.T, e *wsEnv) {
	ch1, ch2 := channel("room"), channel("room")
	ws, id := ConnectWS(t, e.c, e.p, target("/ws/chat/sub", "subscribe", ch1+" , "+ch2), nil)
	l := WaitOpen(t, e.p, id, wsWait)
	if ev := l.Events()[0]; ev.Type != "open" {
		t.Fatalf("first event %v, want open", ev)
	}
	got := slices.Sorted(slices.Values(l.Batches[0].Body.Connection.Channels))
	if want := slices.Sorted(slices.Values([]string{ch1, ch2})); !slices.Equal(got, want) {
		t.Errorf("open webhook: connection.channels %q, want %q", got, want)
	}
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": ch2, "data": "to two"}, "")
	ws.ExpectText(wsWait, "to two")
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": ch1, "data": "to one"}, "")
	ws.ExpectText(wsWait, "to one")
}

func testAcceptSetCookieRelayed(t *testing.T, e *wsEnv) {
	_, resp, _ := ConnectWSResp(t, e.c, e.p, target("/ws/chat/cookie", "cookie", "1"), nil)
	got := resp.Header.Values("Set-Cookie")
	want := []string{"ws_session=abc123; Path=/; HttpOnly", "ws_theme=dark; Path=/; Secure; SameSite=None; Partitioned"}
	if len(got) != len(want) {
		t.Fatalf("101 Set-Cookie %q, want %q, one header each", got, want)
	}
	// Attribute names are case-insensitive (RFC 6265 §5.2), so compare
	// what a browser would store; a rewrite is only worth a note.
	for i := range want {
		g, errG := http.ParseSetCookie(got[i])
		w, _ := http.ParseSetCookie(want[i])
		if errG != nil || g.Name != w.Name || g.Value != w.Value || g.Path != w.Path || g.HttpOnly != w.HttpOnly ||
			g.Secure != w.Secure || g.SameSite != w.SameSite || g.Partitioned != w.Partitioned {
			t.Errorf("101 Set-Cookie %q, want %q", got[i], want[i])
		} else if got[i] != want[i] {
			t.Logf("note: Set-Cookie rewritten on the way: %q became %q", want[i], got[i])
		}
	}
}

func testAcceptSubprotocolChosen(t *testing.T, e *wsEnv) {
	ws, resp, _ := ConnectWSResp(t, e.c, e.p, target("/ws/chat/proto", "protocol", "p2"), nil, "p1", "p2")
	if got := ws.Conn.Subprotocol(); got != "p2" {
		t.Fatalf("subprotocol %q (header %q), want p2", got, resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	ws.Send("echo:proto ok")
	ws.ExpectText(wsWait, "proto ok")
}

func testAcceptSubprotocolNotOffered(t *testing.T, e *wsEnv) {
	tag := NewTag(t)
	resp, body := refused(t, e.c.URL+target("/ws/badprotocol", "tag", tag), nil, "p1")
	t.Logf("a subprotocol the client did not offer: %d %q", resp.StatusCode, body)
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got == "never-offered" {
		t.Errorf("the refusal carries the app's protocol %q", got)
	}
}

func testAcceptReject401Relayed(t *testing.T, e *wsEnv) {
	resp, body := refused(t, e.c.URL+target("/ws/reject401/"+NewTag(t)), nil)
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Bearer realm="ws"` ||
		resp.Header.Get("X-App-Reject") != "yes" || body != "log in first\n" {
		t.Fatalf("got %d %q WWW-Authenticate %q X-App-Reject %q; want the app's 401 as it is",
			resp.StatusCode, body, resp.Header.Get("WWW-Authenticate"), resp.Header.Get("X-App-Reject"))
	}
	if got, want := resp.Header.Values("Set-Cookie"), []string{"denied=1; Path=/", "why=auth; Path=/"}; !slices.Equal(got, want) {
		t.Errorf("401 Set-Cookie %q, want %q", got, want)
	}
}

func testAcceptFail500Relayed(t *testing.T, e *wsEnv) {
	resp, body := refused(t, e.c.URL+target("/ws/fail500/"+NewTag(t)), nil)
	if resp.StatusCode != 500 || resp.Header.Get("X-App-Reject") != "yes" || body != "app broke\n" {
		t.Fatalf("got %d %q X-App-Reject %q; want the app's 500 as it is", resp.StatusCode, body, resp.Header.Get("X-App-Reject"))
	}
}

// With two secrets (rotation) every request carries a v1 for each, and
// either secret alone verifies it.
func testAcceptSignatureRotation(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"callback.secret": []string{"s-new", "s-old"}})
	ws, id := ConnectWS(t, c, e.p, target("/ws/chat/rotate", "a", "b"), nil)
	ws.Send("echo:signed")
	ws.ExpectText(wsWait, "signed")
	l := AppLog(t, e.p, id)
	type signed struct {
		what, header string
		payload      []byte
	}
	sig, _ := l.Accepts[0].Header("Cablecar-Signature")
	all := []signed{{"accept", sig, acceptPayload(l.Accepts[0].PathAndQuery(), l.Accepts[0])}}
	for i, b := range l.Batches {
		sig, _ := b.Header("Cablecar-Signature")
		all = append(all, signed{fmt.Sprintf("webhook %d", i+1), sig, []byte(b.Raw)})
	}
	for _, s := range all {
		if n := strings.Count(s.header, "v1="); n != 2 {
			t.Errorf("%s: Cablecar-Signature %q has %d v1 entries, want 2", s.what, s.header, n)
		}
		for _, secret := range []string{"s-new", "s-old"} {
			if err := auth.NewSigner([]string{secret}).Verify(s.header, s.payload, time.Now(), time.Minute); err != nil {
				t.Errorf("%s: does not verify with %s alone: %v", s.what, secret, err)
			}
		}
		if err := auth.NewSigner([]string{"s-other"}).Verify(s.header, s.payload, time.Now(), time.Minute); err == nil {
			t.Errorf("%s: verifies with a secret never configured", s.what)
		}
	}
}

func testAcceptRedirect302Relayed(t *testing.T, e *wsEnv) {
	resp, body := refused(t, e.c.URL+target("/ws/redirect/"+NewTag(t)), nil)
	if resp.StatusCode != 302 || resp.Header.Get("Location") != "/login?from=ws" || body != "see /login\n" {
		t.Fatalf("got %d %q Location %q; want the app's 302 as it is", resp.StatusCode, body, resp.Header.Get("Location"))
	}
}

func testAcceptNoAcceptHeader403(t *testing.T, e *wsEnv) {
	resp, body := refused(t, e.c.URL+target("/ws/noaccept/"+NewTag(t)), nil)
	if resp.StatusCode != 403 {
		t.Fatalf("got %d %q; a 2xx without Cablecar-Accept is 403", resp.StatusCode, body)
	}
}

// The app stopped after serving a connection, so Cablecar's pool may
// hold a dead keep-alive connection to it: still 503, at once.
func testAcceptAppDown503(t *testing.T, e *wsEnv) {
	p := StartPuma(t, PumaOptions{})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream})
	ws, _ := ConnectWS(t, c, p, target("/ws/chat/down", "first", "up"), nil)
	ws.ExpectText(wsWait, "up")
	ws.CloseWith(wsWait, 1000, "")
	p.Stop()
	start := time.Now()
	resp, body := refused(t, c.URL+"/ws/chat/down", nil)
	if resp.StatusCode != 503 {
		t.Fatalf("got %d %q with the app down, want 503", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("503 took %s for a refused connection", d)
	}
}

func testAcceptSlowAccept504(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"callback.timeout": "1s"})
	start := time.Now()
	resp, body := refused(t, c.URL+target("/ws/slowaccept/"+NewTag(t), "sleep", "3"), nil)
	elapsed := time.Since(start)
	if resp.StatusCode != 504 {
		t.Fatalf("got %d %q from an app slower than callback.timeout, want 504", resp.StatusCode, body)
	}
	if elapsed < 900*time.Millisecond || elapsed > 2500*time.Millisecond {
		t.Fatalf("504 after %s; callback.timeout is 1s", elapsed)
	}
}

// An accept that takes a while but less than callback.timeout (default
// 5s) succeeds.
func testAcceptSlowButInTimeAccept(t *testing.T, e *wsEnv) {
	ws, _ := ConnectWS(t, e.c, e.p, target("/ws/slowaccept/ok", "sleep", "0.5", "first", "late"), nil)
	ws.ExpectText(wsWait, "late")
}

func testAcceptAcceptWith201(t *testing.T, e *wsEnv) {
	ws, _ := ConnectWS(t, e.c, e.p, target("/ws/chat/201", "status", "201", "first", "created"), nil)
	ws.ExpectText(wsWait, "created")
}

// --- handshakes that never reach the app ----------------------------------------

// wsHandshakeTests are TestWebSocket/Handshake/<name>, each the function
// testHandshake<name>; they start in this order and run in parallel.
var wsHandshakeTests = []wsTest{
	{"Malformed", testHandshakeMalformed},
	{"BrowserStyleHeaders", testHandshakeBrowserStyleHeaders},
	{"OriginDefault", testHandshakeOriginDefault},
	{"OriginAllowList", testHandshakeOriginAllowList},
}

func testHandshakeMalformed(t *testing.T, e *wsEnv) {
	for _, tc := range []struct {
		name, method string
		headers      []string
		want         []int
	}{
		{"no key", "GET", []string{"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"}, []int{400}},
		{"version 8", "GET", []string{"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 8"}, []int{426}},
		{"POST", "POST", []string{"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13", "Content-Length: 0"}, []int{400, 405}},
	} {
		path := "/ws/chat/malformed-" + strings.ReplaceAll(tc.name, " ", "-") + "-" + NewTag(t)
		req := tc.method + " " + path + " HTTP/1.1\r\nHost: " + e.c.Addr + "\r\n" + strings.Join(tc.headers, "\r\n") + "\r\n\r\n"
		resp, body := rawExchange(t, e.c.Addr, req, tc.method)
		if !slices.Contains(tc.want, resp.StatusCode) {
			t.Errorf("%s: status %d %q, want one of %v", tc.name, resp.StatusCode, body, tc.want)
		}
		if tc.name == "version 8" {
			if v := resp.Header.Get("Sec-WebSocket-Version"); !strings.Contains(v, "13") {
				t.Errorf("426 without Sec-WebSocket-Version: 13 (got %q)", v)
			}
		}
		if n := e.p.Hits(path); n != 0 {
			t.Errorf("%s: the app saw the request %d times", tc.name, n)
		}
	}
}

// What browsers send: Firefox's "Connection: keep-alive, Upgrade", and
// header values in any case.
func testHandshakeBrowserStyleHeaders(t *testing.T, e *wsEnv) {
	tag := NewTag(t)
	req := strings.Join([]string{
		"GET " + target("/ws/chat/browser", "tag", tag) + " HTTP/1.1",
		"Host: " + e.c.Addr,
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
		"Connection: keep-alive, Upgrade",
		"Upgrade: WebSocket",
		"Origin: http://" + e.c.Addr,
		"Sec-WebSocket-Version: 13",
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
		"Sec-WebSocket-Extensions: permessage-deflate",
		"Pragma: no-cache",
		"", "",
	}, "\r\n")
	resp, body := rawExchange(t, e.c.Addr, req, "GET")
	if resp.StatusCode != 101 {
		t.Fatalf("status %d %q, want 101", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("Sec-WebSocket-Accept %q, want the RFC 6455 example's", got)
	}
	if l := AppLog(t, e.p, ConnID(t, e.p, tag)); len(l.Accepts) != 1 {
		t.Errorf("the app was asked %d times", len(l.Accepts))
	}
}

// Default allowed_origins: only the request's own host.
func testHandshakeOriginDefault(t *testing.T, e *wsEnv) {
	path := "/ws/chat/origin-" + NewTag(t)
	resp, _ := refused(t, e.c.URL+path, http.Header{"Origin": {"http://evil.example"}})
	if resp.StatusCode != 403 {
		t.Errorf("foreign Origin: %d, want 403", resp.StatusCode)
	}
	if n := e.p.Hits(path); n != 0 {
		t.Errorf("the app was asked about a foreign Origin (%d hits)", n)
	}
	ws, _ := ConnectWS(t, e.c, e.p, target("/ws/chat/origin-same", "first", "same"), http.Header{"Origin": {"http://" + e.c.Addr}})
	ws.ExpectText(wsWait, "same")
	ws, _ = ConnectWS(t, e.c, e.p, target("/ws/chat/origin-none", "first", "none"), nil)
	ws.ExpectText(wsWait, "none")
}

func testHandshakeOriginAllowList(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"websocket.allowed_origins": []string{"https://app.example", "http://other.example:8080"}})
	for _, origin := range []string{"https://app.example", "http://other.example:8080"} {
		ws, _ := ConnectWS(t, c, e.p, target("/ws/chat/allowed", "first", "in"), http.Header{"Origin": {origin}})
		ws.ExpectText(wsWait, "in")
	}
	for _, origin := range []string{"https://evil.example", "http://app.example", "https://app.example.evil.example"} {
		path := "/ws/chat/listed-" + NewTag(t)
		resp, _ := refused(t, c.URL+path, http.Header{"Origin": {origin}})
		if resp.StatusCode != 403 {
			t.Errorf("Origin %s: %d, want 403", origin, resp.StatusCode)
		}
		if n := e.p.Hits(path); n != 0 {
			t.Errorf("Origin %s: the app was asked", origin)
		}
	}
	ws, _ := ConnectWS(t, c, e.p, target("/ws/chat/allowed", "first", "no origin"), nil)
	ws.ExpectText(wsWait, "no origin")

	any := e.cablecar(t, map[string]any{"websocket.allowed_origins": []string{"*"}})
	ws, _ = ConnectWS(t, any, e.p, target("/ws/chat/any", "first", "any"), http.Header{"Origin": {"https://whoever.example"}})
	ws.ExpectText(wsWait, "any")
}
