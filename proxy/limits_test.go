package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"
)

// rawConn is a client that writes exactly the bytes it is given, so that
// what reaches the proxy is not tidied up by an HTTP library first.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// dialRaw connects to the proxy at url from the loopback address from
// ("" for the default 127.0.0.1).
func dialRaw(t *testing.T, url, from string) *rawConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Generous: every read below expects something that must come much
	// sooner; this only keeps a broken proxy from hanging the test.
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatalf("writing %q: %v", s, err)
	}
}

// response reads one response and its body.
func (r *rawConn) response() (*http.Response, string) {
	r.t.Helper()
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		r.t.Fatalf("reading a response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		r.t.Fatalf("reading a response body: %v", err)
	}
	return resp, string(b)
}

// closed reports whether the proxy closed the connection with nothing more
// written after the response already read.
func (r *rawConn) closed() (bool, string) {
	rest, err := io.ReadAll(r.br)
	return err == nil, string(rest)
}

// blockingApp answers /fast at once and holds /block until released;
// entered receives once per /block request the app is working on, and
// bodyErr what reading an upload's body ended with.
type blockingApp struct {
	url     string
	entered chan string
	release chan struct{}
	bodyErr chan error
}

func startBlockingApp(t *testing.T) *blockingApp {
	a := &blockingApp{entered: make(chan string, 64), release: make(chan struct{}), bodyErr: make(chan error, 64)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/block":
			a.entered <- r.Header.Get("X-Forwarded-For")
			select {
			case <-a.release:
			case <-r.Context().Done():
			}
		case "/upload":
			n, err := io.Copy(io.Discard, r.Body)
			a.bodyErr <- err
			if err == nil {
				fmt.Fprintf(w, "%d", n)
			}
			return
		}
		fmt.Fprint(w, "ok")
	}))
	var once sync.Once
	a.url = srv.URL
	t.Cleanup(func() {
		once.Do(func() { close(a.release) })
		srv.CloseClientConnections()
		srv.Close()
	})
	return a
}

func limitsConfig(upstream string) Config {
	cfg := testConfig(upstream)
	cfg.ClientBodyTimeout = 500 * time.Millisecond
	cfg.MaxConnsPerClient = 2
	return cfg
}

// A body that stops moving after it began to stream to the app is cut
// within client_body_timeout: 408 to the client, the connection closed,
// the app's request aborted rather than left waiting for the rest.
func TestStalledUploadIs408AndFreesTheAppConnection(t *testing.T) {
	app := startBlockingApp(t)
	px := startProxy(t, limitsConfig(app.url))
	c := dialRaw(t, px.url, "")
	c.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n")
	c.send(strings.Repeat("a", 100<<10)) // past fasthttp's pre-read: streaming to the app
	start := time.Now()
	resp, body := c.response()
	if resp.StatusCode != 408 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") || body == "" {
		t.Fatalf("status %d %q %q, want 408 text/plain", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cut after %v; client_body_timeout is 500ms", d)
	}
	if ok, rest := c.closed(); !ok || rest != "" {
		t.Errorf("connection not closed cleanly after the 408 (%q)", rest)
	}
	select {
	case err := <-app.bodyErr:
		if err == nil {
			t.Error("the app read the cut body to a clean end")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the app's request was left hanging after the cut")
	}
	if n := counterValue(px.p.metrics.clientLimits[limitBodyTimeout]); n != 1 {
		t.Errorf("body_timeout counted %v times, want 1", n)
	}
	// The pool is free: the next request is served.
	if r, err := http.Get(px.url + "/fast"); err != nil || r.StatusCode != 200 {
		t.Fatalf("next request: %v %v", r, err)
	} else {
		r.Body.Close()
	}
}

// A body that stalls within its first bytes (read before any app
// connection is taken) is cut by the same timeout.
func TestUploadStalledAtOnceIs408(t *testing.T) {
	app := startBlockingApp(t)
	px := startProxy(t, limitsConfig(app.url))
	c := dialRaw(t, px.url, "")
	c.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
	start := time.Now()
	resp, _ := c.response()
	if resp.StatusCode != 408 {
		t.Fatalf("status %d, want 408", resp.StatusCode)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cut after %v; client_body_timeout is 500ms", d)
	}
	if ok, _ := c.closed(); !ok {
		t.Error("connection not closed after the 408")
	}
}

// An upload that keeps flowing may take far longer than
// client_body_timeout: the timer is between reads, not for the body.
func TestUploadThatKeepsMovingOutlivesTheBodyTimeout(t *testing.T) {
	app := startBlockingApp(t)
	cfg := limitsConfig(app.url)
	cfg.ClientBodyTimeout = time.Second
	px := startProxy(t, cfg)
	c := dialRaw(t, px.url, "")
	const pieces, piece = 40, 4 << 10
	c.send(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 16<<10+pieces*piece))
	c.send(strings.Repeat("a", 16<<10))
	start := time.Now()
	for i := 0; i < pieces; i++ {
		time.Sleep(50 * time.Millisecond) // the trickle itself, well inside the timeout
		c.send(strings.Repeat("b", piece))
	}
	resp, body := c.response()
	if resp.StatusCode != 200 || body != fmt.Sprint(16<<10+pieces*piece) {
		t.Fatalf("status %d %q after %v", resp.StatusCode, body, time.Since(start))
	}
}

// One client address holds at most max_conns_per_client app connections;
// the next request from it is 503 with Retry-After, another address is
// served, and a slot comes back when a request ends.
func TestPerClientCap(t *testing.T) {
	app := startBlockingApp(t)
	px := startProxy(t, limitsConfig(app.url))
	held := make([]*rawConn, 2)
	for i := range held {
		held[i] = dialRaw(t, px.url, "127.0.0.1")
		held[i].send("GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
		select {
		case <-app.entered:
		case <-time.After(5 * time.Second):
			t.Fatal("the app never saw a held request")
		}
	}

	over := dialRaw(t, px.url, "127.0.0.1")
	over.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, body := over.response()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") || strings.Count(body, "\n") != 1 {
		t.Fatalf("over the cap: %d Retry-After=%q %q %q", resp.StatusCode, resp.Header.Get("Retry-After"),
			resp.Header.Get("Content-Type"), body)
	}
	if n := counterValue(px.p.metrics.clientLimits[limitTooManyConns]); n != 1 {
		t.Errorf("too_many_conns counted %v times, want 1", n)
	}

	other := dialRaw(t, px.url, "127.0.0.2")
	other.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := other.response(); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("another client: %d %q", resp.StatusCode, body)
	}

	app.release <- struct{}{} // one held request ends
	if resp, _ := held[0].response(); resp.StatusCode != 200 {
		t.Fatalf("held request: %d", resp.StatusCode)
	}
	// Its slot is given back once the exchange has finished; wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := dialRaw(t, px.url, "127.0.0.1")
		c.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, _ := c.response()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot of a finished request never came back: %d", resp.StatusCode)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Behind a trusted proxy, the client is the X-Forwarded-For entry before
// the trusted hops: two clients behind one load balancer have a cap each.
func TestPerClientCapBehindTrustedProxy(t *testing.T) {
	app := startBlockingApp(t)
	cfg := limitsConfig(app.url)
	cfg.MaxConnsPerClient = 1
	px := startProxy(t, cfg) // 127.0.0.0/8 is trusted
	a := dialRaw(t, px.url, "")
	a.send("GET /block HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
	<-app.entered

	same := dialRaw(t, px.url, "")
	same.send("GET /fast HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.7, 127.0.0.9\r\n\r\n")
	if resp, _ := same.response(); resp.StatusCode != 503 {
		t.Errorf("same client behind another trusted hop: %d, want 503", resp.StatusCode)
	}
	b := dialRaw(t, px.url, "")
	b.send("GET /fast HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.8\r\n\r\n")
	if resp, _ := b.response(); resp.StatusCode != 200 {
		t.Errorf("another client behind the same proxy: %d, want 200", resp.StatusCode)
	}
}

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8")}
	for _, tc := range []struct {
		peer, xff, want string
	}{
		{"203.0.113.1", "", "203.0.113.1"},
		{"203.0.113.1", "198.51.100.1", "203.0.113.1"}, // untrusted peer: its XFF is not believed
		{"10.0.0.1", "", "10.0.0.1"},
		{"10.0.0.1", "198.51.100.1", "198.51.100.1"},
		{"10.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"},
		{"10.0.0.1", "10.0.0.3,10.0.0.2", "10.0.0.3"}, // all trusted: the farthest
		{"10.0.0.1", "junk, 198.51.100.1", "198.51.100.1"},
		{"10.0.0.1", "198.51.100.1, junk", "10.0.0.1"}, // a hop we cannot read ends the walk
		{"10.0.0.1", "[2001:db8::1]:443", "2001:db8::1"},
		{"10.0.0.1", "198.51.100.1:5000", "198.51.100.1"},
		{"10.0.0.1", "::ffff:198.51.100.1", "198.51.100.1"},
	} {
		var h fasthttp.RequestHeader
		if tc.xff != "" {
			h.Set("X-Forwarded-For", tc.xff)
		}
		got := (&Proxy{cfg: Config{TrustedProxies: trusted}}).clientAddr(netip.MustParseAddr(tc.peer), &h)
		if got != netip.MustParseAddr(tc.want) {
			t.Errorf("peer %s, XFF %q: %s, want %s", tc.peer, tc.xff, got, tc.want)
		}
	}
}

// A WebSocket handshake holds an app connection while the app is asked to
// accept it: it counts toward the same cap.
func TestPerClientCapCoversHandshakes(t *testing.T) {
	app := startBlockingApp(t)
	px := startProxy(t, limitsConfig(app.url))
	entered, release := make(chan struct{}, 8), make(chan struct{})
	px.p.OnUpgrade = func(ctx *fasthttp.RequestCtx) {
		entered <- struct{}{}
		<-release
		ctx.SetStatusCode(403)
	}
	defer close(release)
	const handshake = "GET /cable HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	for i := 0; i < 2; i++ {
		dialRaw(t, px.url, "").send(handshake)
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			t.Fatal("handshake never reached OnUpgrade")
		}
	}
	c := dialRaw(t, px.url, "")
	c.send(handshake)
	if resp, _ := c.response(); resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third handshake: %d Retry-After=%q, want 503", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	c = dialRaw(t, px.url, "")
	c.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := c.response(); resp.StatusCode != 503 {
		t.Fatalf("plain request past the cap of handshakes: %d, want 503", resp.StatusCode)
	}
}

// RFC 9112 §6.1: a request with both Content-Length and Transfer-Encoding
// is a smuggling attempt or a broken client; it is answered and the
// connection closed, and the app never sees it.
func TestContentLengthWithTransferEncodingIs400AndCloses(t *testing.T) {
	app := startBlockingApp(t)
	px := startProxy(t, limitsConfig(app.url))
	for _, req := range []string{
		"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	} {
		c := dialRaw(t, px.url, "")
		c.send(req + "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, _ := c.response()
		if resp.StatusCode != 400 {
			t.Errorf("%q: status %d, want 400", req, resp.StatusCode)
		}
		if ok, rest := c.closed(); !ok || rest != "" {
			t.Errorf("%q: connection not closed after the 400 (then %q)", req, rest)
		}
	}
	select {
	case err := <-app.bodyErr:
		t.Errorf("the app got the request (body read: %v)", err)
	default:
	}
}

// A chunked body that breaks mid-way gets one 400; what follows on the
// connection is never read as another request.
func TestMalformedChunkedBodyGetsOne400(t *testing.T) {
	app := startBlockingApp(t)
	px := startProxy(t, limitsConfig(app.url))
	for name, body := range map[string]string{
		"bad size":            "zz\r\nhello\r\n0\r\n\r\n",
		"bad size after data": "5\r\nhello\r\nnope\r\n0\r\n\r\n",
		"missing CRLF":        "5\r\nhelloXX5\r\nhello\r\n0\r\n\r\n",
	} {
		c := dialRaw(t, px.url, "")
		c.send("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
		resp, _ := c.response()
		if resp.StatusCode != 400 {
			t.Errorf("%s: status %d, want 400", name, resp.StatusCode)
		}
		if ok, rest := c.closed(); !ok || rest != "" {
			t.Errorf("%s: after the 400 came %q (closed cleanly: %v)", name, rest, ok)
		}
	}
}

// Whatever ends an exchange before the client's body was read to its end,
// the rest of that body must never be read as a request.
func TestUnreadBodyClosesTheConnection(t *testing.T) {
	app := rawAppOnce(t, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	px := startProxy(t, limitsConfig(app))
	c := dialRaw(t, px.url, "")
	c.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n")
	c.send(strings.Repeat("a", 100<<10))
	resp, _ := c.response()
	if resp.StatusCode < 400 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// The proxy closes the connection after its answer; with the body's
	// rest unread its kernel may reset it, and then this write fails:
	// closed, which is what is wanted.
	if _, err := io.WriteString(c.c, "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return
	}
	if ok, rest := c.closed(); strings.Contains(rest, "HTTP/1.1") {
		t.Errorf("a second response followed (closed cleanly: %v): %q", ok, rest)
	}
}

func TestMissingHostIs400(t *testing.T) {
	app := startBlockingApp(t)
	px := startProxy(t, limitsConfig(app.url))
	for _, req := range []string{
		"GET /fast HTTP/1.0\r\n\r\n",
		"GET /fast HTTP/1.1\r\n\r\n",
		"GET /fast HTTP/1.1\r\nHost:\r\n\r\n",
	} {
		c := dialRaw(t, px.url, "")
		c.send(req)
		resp, body := c.response()
		if resp.StatusCode != 400 {
			t.Errorf("%q: status %d %q, want 400", req, resp.StatusCode, body)
		}
	}
	// HTTP/1.0 with a Host is served.
	c := dialRaw(t, px.url, "")
	c.send("GET /fast HTTP/1.0\r\nHost: x\r\n\r\n")
	if resp, body := c.response(); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("HTTP/1.0 with Host: %d %q", resp.StatusCode, body)
	}
}

func TestClientLimiter(t *testing.T) {
	l := newClientLimiter(2)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	if !l.acquire(a) || !l.acquire(a) || l.acquire(a) {
		t.Fatal("cap of 2 not enforced")
	}
	if !l.acquire(b) {
		t.Fatal("another address refused")
	}
	l.release(a)
	if !l.acquire(a) {
		t.Fatal("a released slot was not given back")
	}
	l.release(a)
	l.release(a)
	l.release(b)
	if n := l.tracked(); n != 0 {
		t.Errorf("%d addresses still tracked with nothing held", n)
	}
	if off := newClientLimiter(0); !off.acquire(a) || !off.acquire(a) || !off.acquire(a) {
		t.Error("a zero cap refused")
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// Bodies read to their end leave the connection open for the next request:
// the closing above is for bodies left unread only.
func TestReadBodiesKeepTheConnection(t *testing.T) {
	app := startBlockingApp(t)
	px := startProxy(t, limitsConfig(app.url))
	c := dialRaw(t, px.url, "")
	big := strings.Repeat("a", 100<<10)
	c.send(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(big), big))
	c.send("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	c.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
	for _, want := range []string{fmt.Sprint(len(big)), "5", "3"} {
		resp, body := c.response()
		if resp.StatusCode != 200 || body != want || resp.Close {
			t.Fatalf("status %d %q (close: %v), want 200 %q on a kept-alive connection", resp.StatusCode, body, resp.Close, want)
		}
	}
}
