package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
)

type testProxy struct {
	url  string
	p    *Proxy
	logs *testsupport.SyncBuffer
}

func testConfig(upstream string) Config {
	return Config{
		Network:           "tcp",
		Address:           strings.TrimPrefix(upstream, "http://"),
		ConnectTimeout:    time.Second,
		ResponseTimeout:   2 * time.Second,
		IdleTimeout:       5 * time.Second,
		ClientIdleTimeout: 5 * time.Second,
		MaxConns:          16,
		TrustedProxies:    []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		ClientBodyTimeout: 5 * time.Second,
		MaxConnsPerClient: 16,
	}
}

func startProxy(t *testing.T, cfg Config) *testProxy {
	t.Helper()
	logs := &testsupport.SyncBuffer{}
	log := zerolog.New(logs)
	p := New(cfg, log, prometheus.NewRegistry())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(cfg, p.ServeHTTP, log)
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.ShutdownWithContext(ctx)
		<-done
		p.Close()
	})
	return &testProxy{url: "http://" + ln.Addr().String(), p: p, logs: logs}
}

// echo answers with what it received, as JSON.
func echo(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h := map[string]string{}
	for k, v := range r.Header {
		h[k] = strings.Join(v, " | ")
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"method": r.Method, "uri": r.RequestURI, "host": r.Host, "headers": h, "body": string(body),
	})
}

type echoed struct {
	Method  string            `json:"method"`
	URI     string            `json:"uri"`
	Host    string            `json:"host"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

func doEcho(t *testing.T, req *http.Request) echoed {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var e echoed
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestEveryMethodPassesWithItsBody(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(echo))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))
	for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"} {
		body := ""
		if m != "GET" && m != "OPTIONS" {
			body = "payload for " + m
		}
		req, _ := http.NewRequest(m, px.url+"/things/1?a=1&b=%20x", strings.NewReader(body))
		e := doEcho(t, req)
		if e.Method != m || e.URI != "/things/1?a=1&b=%20x" || e.Body != body {
			t.Errorf("%s: app saw %+v", m, e)
		}
	}
}

func TestRequestHeaders(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(echo))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))

	req, _ := http.NewRequest("GET", px.url+"/h", nil)
	req.Host = "shop.example.com"
	req.Header.Set("Connection", "X-Hop-One, keep-alive")
	req.Header.Set("X-Hop-One", "must go")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Cablecar-Connection-Id", "forged")
	req.Header.Set("cablecar-upgrade", "websocket")
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("X-Request-Id", "abc-123")
	req.Header.Set("X-Kept", "yes")
	e := doEcho(t, req)

	for _, gone := range []string{"X-Hop-One", "Keep-Alive", "Proxy-Authorization", "Te", "Cablecar-Connection-Id", "Cablecar-Upgrade"} {
		if v, ok := e.Headers[gone]; ok {
			t.Errorf("%s reached the app: %q", gone, v)
		}
	}
	want := map[string]string{
		"X-Forwarded-For":   "203.0.113.9, 127.0.0.1",
		"X-Forwarded-Proto": "https", // 127.0.0.1 is trusted
		"X-Forwarded-Host":  "shop.example.com",
		"X-Request-Id":      "abc-123",
		"X-Kept":            "yes",
	}
	for k, v := range want {
		if e.Headers[k] != v {
			t.Errorf("%s = %q, want %q", k, e.Headers[k], v)
		}
	}
	if e.Host != "shop.example.com" {
		t.Errorf("Host = %q", e.Host)
	}
}

func TestUntrustedPeerCannotSetProtoOrHost(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(echo))
	defer app.Close()
	cfg := testConfig(app.URL)
	cfg.TrustedProxies = nil
	px := startProxy(t, cfg)
	req, _ := http.NewRequest("GET", px.url+"/", nil)
	req.Header.Set("X-Forwarded-Proto", "https")
	req.Header.Set("X-Forwarded-Host", "evil.example")
	e := doEcho(t, req)
	if e.Headers["X-Forwarded-Proto"] != "http" || e.Headers["X-Forwarded-Host"] == "evil.example" {
		t.Errorf("untrusted forwarded headers kept: %v", e.Headers)
	}
}

func TestRequestIDsAreGeneratedUnique(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(echo))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		req, _ := http.NewRequest("GET", px.url+"/", nil)
		if i%2 == 1 {
			req.Header.Set("X-Request-Id", "bad id with spaces")
		}
		id := doEcho(t, req).Headers["X-Request-Id"]
		if len(id) != 36 || seen[id] {
			t.Fatalf("request id %q (len %d, seen before %v)", id, len(id), seen[id])
		}
		seen[id] = true
	}
}

// rawApp answers every request on a connection with the bytes resp.
func rawApp(t *testing.T, resp string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(c, resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

func TestResponseHopByHopHeadersRemoved(t *testing.T) {
	app := rawApp(t, "HTTP/1.1 200 OK\r\nConnection: X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=3\r\n"+
		"Proxy-Authenticate: Basic\r\nX-App: yes\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok")
	px := startProxy(t, testConfig(app))
	resp, err := http.Get(px.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" || resp.Header.Get("X-App") != "yes" || len(resp.Header.Values("Set-Cookie")) != 2 {
		t.Fatalf("body %q headers %v", body, resp.Header)
	}
	for _, gone := range []string{"X-Secret-Hop", "Keep-Alive", "Proxy-Authenticate"} {
		if resp.Header.Get(gone) != "" {
			t.Errorf("%s reached the client", gone)
		}
	}
}

func TestHeadKeepsContentLengthAndNoContentHasNoBody(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/empty" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Length", "11")
		_, _ = io.WriteString(w, "hello world")
	}))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))

	c, err := net.Dial("tcp", strings.TrimPrefix(px.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ContentLength != 11 {
		t.Errorf("HEAD Content-Length = %d, want 11", resp.ContentLength)
	}
	// The same connection must still frame the next response correctly.
	fmt.Fprintf(c, "GET /empty HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err = http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 204 {
		t.Errorf("status %d", resp.StatusCode)
	}
	fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err = http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "hello world" {
		t.Errorf("body after 204 = %q", b)
	}
}

// TestResponseStreamsEventByEvent proves the proxy does not buffer: the
// client reads each event before the app is allowed to write the next.
func TestResponseStreamsEventByEvent(t *testing.T) {
	next := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 1; i <= 3; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-time.After(10 * time.Second):
				return
			}
		}
	}))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))
	resp, err := http.Get(px.url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := 1; i <= 3; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := fmt.Sprintf("data: %d\n", i); line != want {
			t.Fatalf("got %q, want %q", line, want)
		}
		_, _ = br.ReadString('\n')
		next <- struct{}{}
	}
}

// TestRequestBodyStreams proves an upload reaches the app while the client
// is still sending it.
func TestRequestBodyStreams(t *testing.T) {
	got := make(chan []byte, 1)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := make([]byte, 100<<10)
		if _, err := io.ReadFull(r.Body, first); err != nil {
			t.Errorf("app read: %v", err)
			return
		}
		got <- first
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", int64(len(first))+n)
	}))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))

	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte("x"), 100<<10)
		_, _ = pw.Write(chunk)
		// The rest is sent only once the app has the first part.
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			pw.CloseWithError(fmt.Errorf("app never saw the first 100 KiB while the upload was open"))
			return
		}
		_, _ = pw.Write(chunk)
		pw.Close()
	}()
	resp, err := http.Post(px.url+"/upload", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != fmt.Sprint(200<<10) {
		t.Fatalf("app counted %s bytes", b)
	}
}

func TestUnreachableAppIs502(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	px := startProxy(t, testConfig("http://"+addr))
	resp, err := http.Get(px.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") ||
		strings.Count(string(b), "\n") != 1 {
		t.Fatalf("%d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	if !strings.Contains(px.logs.String(), `"reason":"unreachable"`) {
		t.Errorf("no log line for the failure: %s", px.logs)
	}
	if err := px.p.Ping(context.Background()); err == nil {
		t.Error("Ping succeeded against a closed port")
	}
}

func TestSilentAppIs504AndNotRetried(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		<-release
	}))
	defer app.Close()
	defer close(release) // before app.Close, which waits for the handler
	cfg := testConfig(app.URL)
	cfg.ResponseTimeout = 300 * time.Millisecond
	px := startProxy(t, cfg)
	resp, err := http.Get(px.url + "/slow")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 504 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 1 {
		t.Errorf("app saw %d attempts of a timed-out GET, want 1", hits)
	}
}

// A stream that keeps moving may last longer than response_timeout.
func TestStreamOutlivesResponseTimeoutWhileItMoves(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 8; i++ {
			fmt.Fprintf(w, "tick %d\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	defer app.Close()
	cfg := testConfig(app.URL)
	cfg.ResponseTimeout = 300 * time.Millisecond
	px := startProxy(t, cfg)
	resp, err := http.Get(px.url + "/ticks")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || strings.Count(string(b), "tick") != 8 {
		t.Fatalf("got %q, %v", b, err)
	}
}

func TestWebSocketUpgradeIsRefusedUntilSupported(t *testing.T) {
	hit := make(chan struct{}, 1)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit <- struct{}{} }))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))
	req, _ := http.NewRequest("GET", px.url+"/cable", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 501 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	select {
	case <-hit:
		t.Fatal("the upgrade request reached the app")
	default:
	}
}

func TestAccessLogLine(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(echo))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))
	req, _ := http.NewRequest("POST", px.url+"/login?token=SECRET1&next=%2Fhome&api_key=SECRET2", strings.NewReader("x"))
	req.Header.Set("Authorization", "Bearer SECRET3")
	req.Header.Set("Cookie", "session=SECRET4")
	req.Header.Set("X-Request-Id", "rid-1")
	doEcho(t, req)

	var line map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, l := range strings.Split(px.logs.String(), "\n") {
			if strings.Contains(l, `"message":"request"`) {
				_ = json.Unmarshal([]byte(l), &line)
			}
		}
		if line != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if line == nil {
		t.Fatalf("no access log line in %s", px.logs)
	}
	if line["method"] != "POST" || line["path"] != "/login" || line["status"] != float64(200) ||
		line["request_id"] != "rid-1" || line["query"] != "token=[FILTERED]&next=%2Fhome&api_key=[FILTERED]" {
		t.Errorf("access log line %v", line)
	}
	if b, ok := line["bytes"].(float64); !ok || b <= 0 {
		t.Errorf("bytes = %v", line["bytes"])
	}
	for _, s := range []string{"SECRET1", "SECRET2", "SECRET3", "SECRET4"} {
		if strings.Contains(px.logs.String(), s) {
			t.Errorf("%s leaked into the logs", s)
		}
	}
}

func TestUnixSocketUpstream(t *testing.T) {
	sock := t.TempDir() + "/app.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(echo)}
	go func() { _ = app.Serve(ln) }()
	defer app.Close()
	cfg := testConfig("")
	cfg.Network, cfg.Address = "unix", sock
	px := startProxy(t, cfg)
	req, _ := http.NewRequest("PUT", px.url+"/over/unix", strings.NewReader("via socket"))
	if e := doEcho(t, req); e.Body != "via socket" || e.URI != "/over/unix" {
		t.Fatalf("app saw %+v", e)
	}
	if err := px.p.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestRedactQuery(t *testing.T) {
	extra := sensitiveSet([]string{"t"})
	for _, tc := range []struct{ in, want string }{
		{"a=1&b=2", "a=1&b=2"},
		{"token=abc", "token=[FILTERED]"},
		{"%74oken=abc&x=1", "%74oken=[FILTERED]&x=1"},
		{"t=abc&tt=1", "t=[FILTERED]&tt=1"},
		{"password=x&flag", "password=[FILTERED]&flag"},
		{"X-Amz-Signature=deadbeef", "X-Amz-Signature=[FILTERED]"},
		{"%zz=1", "%zz=[FILTERED]"},
		// ';' separates pairs for some parsers (Rack 2, the W3C's old
		// advice): a token after one is a token.
		// To a parser that splits at '&' alone, what follows is value.
		{"x=1;token=abc", "x=1;token=[FILTERED]"},
		{"x=1;token=abc;y=2&z=3", "x=1;token=[FILTERED]&z=3"},
		{"token=abc;x=1&t=2;y", "token=[FILTERED]&t=[FILTERED]"},
		{"a=1;;%74oken=abc", "a=1;;%74oken=[FILTERED]"},
		{"a=1;b=2;token&c", "a=1;b=2;token&c"},
	} {
		if got := string(redactQuery([]byte(tc.in), extra, nil)); got != tc.want {
			t.Errorf("redactQuery(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A stream the app stops feeding for longer than response_timeout is cut,
// and the cut is logged at warn with its reason.
func TestSilentStreamIsCutAndLogged(t *testing.T) {
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		<-release
	}))
	defer app.Close()
	defer close(release)
	cfg := testConfig(app.URL)
	cfg.ResponseTimeout = 300 * time.Millisecond
	px := startProxy(t, cfg)
	resp, err := http.Get(px.url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || string(b) != "data: 1\n\n" {
		t.Fatalf("want the first event then a cut stream, got %q, %v", b, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(px.logs.String(), `"message":"app response cut short"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no warn line for the cut stream: %s", px.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(px.logs.String(), `"reason":"timeout"`) {
		t.Errorf("cut not attributed to the timeout: %s", px.logs)
	}
}

// Bodies of known length are read whole up to smallBody and streamed above
// it; either way they arrive intact, and a short one is a 502, not a
// truncated 200.
func TestKnownLengthBodies(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (smallBody*4)/16+3)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			_, _ = w.Write(big)
		case "/edge":
			w.Header().Set("Content-Length", fmt.Sprint(smallBody))
			_, _ = w.Write(big[:smallBody])
		}
	}))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))
	for path, want := range map[string][]byte{"/big": big, "/edge": big[:smallBody]} {
		resp, err := http.Get(px.url + path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(b, want) || resp.ContentLength != int64(len(want)) {
			t.Errorf("%s: %d bytes (Content-Length %d), %v; want %d", path, len(b), resp.ContentLength, err, len(want))
		}
	}

	short := rawAppOnce(t, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
	px = startProxy(t, testConfig(short))
	resp, err := http.Get(px.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Errorf("short small body: status %d, want 502", resp.StatusCode)
	}
}

// rawAppOnce answers each connection's first request with resp, then closes.
func rawAppOnce(t *testing.T, resp string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					_, _ = io.WriteString(c, resp)
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}
