package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startStack is Puma plus Cablecar in front of it.
func startStack(t *testing.T, popts PumaOptions, config map[string]any) (*Puma, *Cablecar) {
	t.Helper()
	p := StartPuma(t, popts)
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: config})
	return p, c
}

func TestProxyMethods(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)

	for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"} {
		t.Run(method, func(t *testing.T) {
			var payload []byte
			if method != "GET" && method != "OPTIONS" {
				payload = []byte("body of a " + method + " request\n")
			}
			req := newRequest(t, method, c.URL+"/echo?m="+method, bytes.NewReader(payload))
			if payload == nil {
				req.Body = nil
			}
			e := echo(t, client, req)
			if e.Method != method || e.Path != "/echo" || e.QueryString != "m="+method {
				t.Fatalf("app saw %s %s?%s", e.Method, e.Path, e.QueryString)
			}
			if e.BodySize != int64(len(payload)) || e.BodySHA256 != sha256Hex(payload) {
				t.Fatalf("app saw a body of %d bytes (sha %s), want %d", e.BodySize, e.BodySHA256, len(payload))
			}
		})
	}

	// HEAD: the app's Content-Length comes through and no body does. The
	// HEAD and a GET share one connection, so a stray body would be read
	// as the start of the GET's response.
	t.Run("HEAD", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", c.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(conn, "HEAD /hello HTTP/1.1\r\nHost: e2e\r\n\r\nGET /hello HTTP/1.1\r\nHost: e2e\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		head, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
		if err != nil {
			t.Fatalf("reading the HEAD response: %v", err)
		}
		head.Body.Close()
		if head.StatusCode != 200 || head.Header.Get("Content-Length") != "12" {
			t.Fatalf("HEAD /hello: status %d, Content-Length %q; want 200, 12", head.StatusCode, head.Header.Get("Content-Length"))
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("reading the GET after HEAD (did HEAD send a body?): %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "hello world\n" {
			t.Fatalf("GET after HEAD: %d %q", resp.StatusCode, body)
		}
	})
}

// TestProxyLargeUpload sends 200 MiB through Cablecar and checks that the
// app got every byte, in order, and that Cablecar never held the body.
func TestProxyLargeUpload(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)

	const size = 200 << 20
	body, sum := prngBody(size, 200)
	req := newRequest(t, "POST", c.URL+"/upload", body)
	req.ContentLength = size // sent with Content-Length, read from a pipe
	start := time.Now()
	e := echo(t, client, req)
	t.Logf("200 MiB upload took %s", time.Since(start).Round(time.Millisecond))
	if e.BodySize != size || e.BodySHA256 != sum() {
		t.Fatalf("app got %d bytes with sha256 %s; sent %d with %s", e.BodySize, e.BodySHA256, size, sum())
	}

	// The same without a length: the client sends it chunked.
	const chunkedSize = 16<<20 + 3
	body, sum = prngBody(chunkedSize, 16)
	e = echo(t, client, newRequest(t, "PUT", c.URL+"/upload", body))
	if e.BodySize != chunkedSize || e.BodySHA256 != sum() {
		t.Fatalf("chunked upload: app got %d bytes with sha256 %s; sent %d with %s", e.BodySize, e.BodySHA256, chunkedSize, sum())
	}

	// Bound on peak RSS over the process's whole life (start-up, pools,
	// metrics included). Measured while writing this test: 12 MiB without
	// the race detector and 36 MiB with it (its shadow memory roughly
	// triples a Go heap). A binary that held the body would need 200 MiB
	// more; one that buffered even a quarter of it would cross these
	// bounds, which leave about three times the measured figure as room.
	bound := int64(48 << 20)
	if raceEnabled {
		bound = 100 << 20
	}
	peak := c.PeakRSS()
	t.Logf("cablecar peak RSS %d MiB (race detector: %v)", peak>>20, raceEnabled)
	if peak > bound {
		t.Fatalf("cablecar peak RSS %d MiB exceeds %d MiB: the upload was buffered", peak>>20, bound>>20)
	}
}

// TestProxyStreaming reads each event before the app is allowed to produce
// the next: a proxy that buffered the response would deliver nothing.
func TestProxyStreaming(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)

	for _, tc := range []struct {
		path, ctype string
		event       func(i int) []string
	}{
		{"/sse", "text/event-stream", func(i int) []string { return []string{fmt.Sprintf("data: %d", i), ""} }},
		{"/chunked", "text/plain", func(i int) []string { return []string{fmt.Sprintf("chunk %d", i)} }},
	} {
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			id := uniqueID(t)
			s := openStream(t, client, c.URL+tc.path+"?n=3&id="+id)
			if s.resp.StatusCode != 200 {
				t.Fatalf("status %d", s.resp.StatusCode)
			}
			if got := s.resp.Header.Get("Content-Type"); got != tc.ctype {
				t.Fatalf("Content-Type %q, want %q", got, tc.ctype)
			}
			for i := 1; i <= 3; i++ {
				if i > 1 {
					p.Release(id)
				}
				for _, line := range tc.event(i) {
					s.expect(t, line, 5*time.Second, fmt.Sprintf("event %d, before release %d", i, i))
				}
			}
			s.expectEnd(t, 5*time.Second)
		})
	}
}

func TestProxySlowApp504(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, map[string]any{"proxy.response_timeout": "1s"})
	client := newClient(t)

	start := time.Now()
	resp, body := do(t, client, newRequest(t, "GET", c.URL+"/slow?seconds=3", nil))
	elapsed := time.Since(start)
	if resp.StatusCode != 504 {
		t.Fatalf("status %d, want 504; body %q", resp.StatusCode, body)
	}
	if elapsed < 900*time.Millisecond || elapsed > 2500*time.Millisecond {
		t.Fatalf("504 after %s; response_timeout is 1s", elapsed)
	}
	checkOneLineText(t, resp, body)
	if p.Hits("/slow") != 1 {
		t.Fatalf("app saw /slow %d times, want 1 (no retry of a request that may have had effects)", p.Hits("/slow"))
	}
	c.WaitLog(5*time.Second, "a warn or error log line about the timeout", func(l LogLine) bool {
		return isWarnOrError(l) && l.Str("message") != "request"
	})
	WaitFor(t, 5*time.Second, `cablecar_proxy_upstream_errors_total{reason="timeout"} to count it`, func() bool {
		return c.Metric("cablecar_proxy_upstream_errors_total", "reason=timeout") >= 1
	})
	// The app is still there: a fast request on the same client works.
	resp, body = do(t, client, newRequest(t, "GET", c.URL+"/hello", nil))
	if resp.StatusCode != 200 || string(body) != "hello world\n" {
		t.Fatalf("after the 504: %d %q", resp.StatusCode, body)
	}
}

func TestProxyAppDown502(t *testing.T) {
	t.Parallel()
	closed := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	c := StartCablecar(t, CablecarOptions{Upstream: closed})
	client := newClient(t)

	start := time.Now()
	resp, body := do(t, client, newRequest(t, "GET", c.URL+"/anything", nil))
	if resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502; body %q", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("502 took %s for a refused connection", d)
	}
	checkOneLineText(t, resp, body)
	c.WaitLog(5*time.Second, "a warn or error log line about the unreachable app", func(l LogLine) bool {
		return isWarnOrError(l) && l.Str("message") != "request"
	})
	WaitFor(t, 5*time.Second, `cablecar_proxy_upstream_errors_total{reason="unreachable"} to count it`, func() bool {
		return c.Metric("cablecar_proxy_upstream_errors_total", "reason=unreachable") >= 1
	})
	code, reason := c.Admin("/readyz")
	if code != 503 || strings.TrimSpace(reason) == "" {
		t.Fatalf("/readyz with the app down: %d %q; want 503 with a reason", code, reason)
	}
}

// TestReadyzFollowsApp: /readyz is 503 before the app listens, 200 while it
// does, and 503 again once it is gone; /healthz stays 200 throughout.
func TestReadyzFollowsApp(t *testing.T) {
	t.Parallel()
	port := FreePort(t)
	c := StartCablecar(t, CablecarOptions{Upstream: fmt.Sprintf("http://127.0.0.1:%d", port)})
	client := newClient(t)

	if code, body := c.Admin("/readyz"); code != 503 {
		t.Fatalf("/readyz before the app started: %d %q", code, body)
	}
	p := StartPuma(t, PumaOptions{Port: port})
	WaitFor(t, 5*time.Second, "/readyz 200 once the app is up", func() bool { return c.AdminStatus("/readyz") == 200 })
	if code := statusOf(client, c.URL+"/hello"); code != 200 {
		t.Fatalf("/hello with the app up: %d", code)
	}
	p.Kill()
	WaitFor(t, 5*time.Second, "/readyz 503 once the app is gone", func() bool { return c.AdminStatus("/readyz") == 503 })
	if code := statusOf(client, c.URL+"/hello"); code != 502 {
		t.Fatalf("/hello with the app gone: %d, want 502", code)
	}
	if code, _ := c.Admin("/healthz"); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
}

// TestProxyRequestHeaders checks, from the app's side, what Cablecar did to
// the request headers.
func TestProxyRequestHeaders(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)

	// Everything a client may send that must not reach the app, and what
	// Cablecar must keep or extend. Sent raw: the Go client would drop or
	// rewrite some of these.
	request := strings.Join([]string{
		"POST /echo?x=1 HTTP/1.1",
		"Host: example.test:8080",
		"Connection: keep-alive, X-Hop-Custom",
		"X-Hop-Custom: named-in-connection",
		"Keep-Alive: timeout=5",
		"Proxy-Connection: keep-alive",
		"Proxy-Authorization: Basic dXNlcjpwYXNz",
		"TE: trailers",
		"Trailer: X-Checksum",
		"Cablecar-Connection-Id: forged",
		"cablecar-upgrade: websocket",
		"CABLECAR-CLAIMS: {}",
		"X-Forwarded-For: 203.0.113.7",
		"X-Forwarded-Proto: https",
		"X-Forwarded-Host: public.example",
		"X-Request-Id: client-id-42",
		"X-Kept: yes",
		"Transfer-Encoding: chunked",
		"", "5\r\nhello\r\n0\r\n\r\n",
	}, "\r\n")
	resp, body := rawExchange(t, c.Addr, request, "POST")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %q", resp.StatusCode, body)
	}
	e := decodeEcho(t, body)

	for _, name := range []string{"X-Hop-Custom", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "TE", "Trailer",
		"Cablecar-Connection-Id", "Cablecar-Upgrade", "Cablecar-Claims"} {
		if v, ok := e.Header(name); ok {
			t.Errorf("app got %s: %q; it must be removed", name, v)
		}
	}
	if v, _ := e.Header("Connection"); strings.Contains(strings.ToLower(v), "x-hop-custom") {
		t.Errorf("app got Connection: %q, the client's hop list", v)
	}
	if e.BodySize != 5 || e.BodySHA256 != sha256Hex([]byte("hello")) {
		t.Errorf("app got a body of %d bytes, want the 5 of the chunked body", e.BodySize)
	}
	want := map[string]string{
		"Host":              "example.test:8080",
		"X-Forwarded-For":   "203.0.113.7, 127.0.0.1",
		"X-Forwarded-Proto": "https",          // kept: loopback is a trusted proxy
		"X-Forwarded-Host":  "public.example", // same
		"X-Request-Id":      "client-id-42",
		"X-Kept":            "yes",
	}
	for name, v := range want {
		if got, _ := e.Header(name); got != v {
			t.Errorf("app got %s: %q, want %q", name, got, v)
		}
	}

	// A plain request: Cablecar sets the forwarding headers itself and a
	// fresh request id, a different one each time.
	ids := map[string]bool{}
	for range 2 {
		resp, body = rawExchange(t, c.Addr, "GET /echo HTTP/1.1\r\nHost: app.test\r\n\r\n", "GET")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %q", resp.StatusCode, body)
		}
		e = decodeEcho(t, body)
		want = map[string]string{
			"Host":              "app.test",
			"X-Forwarded-For":   "127.0.0.1",
			"X-Forwarded-Proto": "http",
			"X-Forwarded-Host":  "app.test",
		}
		for name, v := range want {
			if got, _ := e.Header(name); got != v {
				t.Errorf("app got %s: %q, want %q", name, got, v)
			}
		}
		id, _ := e.Header("X-Request-Id")
		if id == "" {
			t.Fatal("app got no X-Request-Id")
		}
		ids[id] = true
	}
	if len(ids) != 2 {
		t.Errorf("two requests got the same generated X-Request-Id: %v", ids)
	}
	// The id the app got is the one in the access log, so the two can be
	// joined.
	for id := range ids {
		c.WaitLog(5*time.Second, "an access-log line with request_id "+id, func(l LogLine) bool {
			return l.Str("message") == "request" && l.Str("request_id") == id
		})
	}

	// A non-WebSocket Upgrade is not followed: the header is dropped and
	// the request passes as plain HTTP.
	resp, body = rawExchange(t, c.Addr, "GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", "GET")
	if resp.StatusCode != 200 {
		t.Fatalf("Upgrade: h2c: status %d: %q", resp.StatusCode, body)
	}
	if v, ok := decodeEcho(t, body).Header("Upgrade"); ok {
		t.Errorf("app got Upgrade: %q", v)
	}
}

func TestProxyResponseHeaders(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)

	resp, body := do(t, client, newRequest(t, "GET", c.URL+"/response-headers", nil))
	if resp.StatusCode != 200 || string(body) != "headers\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("X-App") != "yes" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("custom headers lost: %v", resp.Header)
	}
	if got := resp.Header.Values("X-App-Multi"); strings.Join(got, ",") != "one,two" {
		t.Errorf("X-App-Multi = %q, want both values", got)
	}
	if got := resp.Header.Values("Set-Cookie"); len(got) != 2 {
		t.Errorf("Set-Cookie = %q, want both cookies", got)
	}

	// Hop-by-hop headers of the app's response stay on the app's hop.
	resp, _ = do(t, client, newRequest(t, "GET", c.URL+"/response-headers?hop=1", nil))
	if resp.Header.Get("X-App") != "yes" {
		t.Fatalf("X-App lost: %v", resp.Header)
	}
	for _, name := range []string{"X-App-Hop", "Proxy-Authenticate"} {
		if v := resp.Header.Get(name); v != "" {
			t.Errorf("client got %s: %q from the app's hop", name, v)
		}
	}
	if v := resp.Header.Get("Keep-Alive"); strings.Contains(v, "99") {
		t.Errorf("client got the app's Keep-Alive: %q", v)
	}
	if v := resp.Header.Get("Connection"); strings.Contains(strings.ToLower(v), "x-app-hop") {
		t.Errorf("client got the app's Connection: %q", v)
	}
}

func TestProxyUnixSocketUpstream(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{Unix: true}, nil)
	if !strings.HasPrefix(p.Upstream, "unix:/") {
		t.Fatalf("upstream %q", p.Upstream)
	}
	client := newClient(t)

	e := echo(t, client, newRequest(t, "GET", c.URL+"/echo?via=unix", nil))
	if e.Peer != "unix" || e.QueryString != "via=unix" {
		t.Fatalf("app saw peer %q query %q; want the Unix socket", e.Peer, e.QueryString)
	}
	const size = 20 << 20
	body, sum := prngBody(size, 20)
	req := newRequest(t, "POST", c.URL+"/upload", body)
	req.ContentLength = size
	e = echo(t, client, req)
	if e.BodySize != size || e.BodySHA256 != sum() {
		t.Fatalf("upload over the Unix socket: app got %d bytes, sha %s", e.BodySize, e.BodySHA256)
	}
	WaitFor(t, 5*time.Second, "/readyz 200 with a Unix socket upstream", func() bool { return c.AdminStatus("/readyz") == 200 })
}

// TestProxyKeepAlivePool: sequential requests reuse pooled connections to
// the app, seen both in Cablecar's dial counter and in the client ports the
// app saw.
func TestProxyKeepAlivePool(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)

	before := c.Metric("cablecar_proxy_upstream_dials_total")
	peers := map[string]bool{}
	const n = 50
	for range n {
		e := echo(t, client, newRequest(t, "GET", c.URL+"/echo", nil))
		peers[e.Peer] = true
	}
	dials := c.Metric("cablecar_proxy_upstream_dials_total") - before
	t.Logf("%d requests: %v dials, %d distinct connections seen by the app", n, dials, len(peers))
	if dials > 5 || len(peers) > 5 {
		t.Fatalf("%d sequential requests opened %v connections (app saw %d); want a handful at most", n, dials, len(peers))
	}
	if dials < 1 {
		t.Fatalf("cablecar_proxy_upstream_dials_total did not move (%v)", dials)
	}
}

func TestAccessLog(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)

	type sent struct {
		method, target, path, query string
		status                      int
	}
	reqs := map[string]sent{
		"log-a": {"GET", "/hello", "/hello", "", 200},
		"log-b": {"POST", "/echo?x=1&y=2", "/echo", "x=1&y=2", 200},
		"log-c": {"GET", "/status/404", "/status/404", "", 404},
		"log-d": {"DELETE", "/status/503?why=test", "/status/503", "why=test", 503},
	}
	bodies := map[string]int{}
	for id, r := range reqs {
		req := newRequest(t, r.method, c.URL+r.target, strings.NewReader("abc"))
		req.Header.Set("X-Request-Id", id)
		resp, body := do(t, client, req)
		if resp.StatusCode != r.status {
			t.Fatalf("%s %s: %d", r.method, r.target, resp.StatusCode)
		}
		bodies[id] = len(body)
	}

	WaitFor(t, 5*time.Second, "an access-log line for each request", func() bool {
		n := 0
		for _, l := range c.AccessLogs() {
			if _, ok := reqs[l.Str("request_id")]; ok {
				n++
			}
		}
		return n >= len(reqs)
	})
	seen := map[string]int{}
	for _, l := range c.AccessLogs() {
		id := l.Str("request_id")
		r, ok := reqs[id]
		if !ok {
			continue
		}
		seen[id]++
		if l.Str("level") != "info" {
			t.Errorf("%s: level %q, want info", id, l.Str("level"))
		}
		if l.Str("method") != r.method || l.Str("path") != r.path {
			t.Errorf("%s: method %q path %q, want %q %q", id, l.Str("method"), l.Str("path"), r.method, r.path)
		}
		if q, has := l["query"]; r.query == "" && has {
			t.Errorf("%s: query %v logged for a request without one", id, q)
		} else if r.query != "" && l.Str("query") != r.query {
			t.Errorf("%s: query %q, want %q", id, l.Str("query"), r.query)
		}
		if v, ok := l.Num("status"); !ok || int(v) != r.status {
			t.Errorf("%s: status %v, want %d", id, l["status"], r.status)
		}
		if v, ok := l.Num("bytes"); !ok || int(v) != bodies[id] {
			t.Errorf("%s: bytes %v, want %d (the body sent to the client)", id, l["bytes"], bodies[id])
		}
		if v, ok := l.Num("duration_ms"); !ok || v < 0 || v > 10000 {
			t.Errorf("%s: duration %v, want milliseconds", id, l["duration_ms"])
		}
		if !strings.Contains(l.Str("remote"), "127.0.0.1") {
			t.Errorf("%s: remote %q", id, l.Str("remote"))
		}
		if l.Str("time") == "" {
			t.Errorf("%s: no time", id)
		}
	}
	for id := range reqs {
		if seen[id] != 1 {
			t.Errorf("%s: %d access-log lines, want 1", id, seen[id])
		}
	}
}

// TestLogsHideSecrets: at debug level, with a request carrying a token in
// the query, an Authorization header and a cookie, none of them appears in
// anything Cablecar writes; the app still gets them all.
func TestLogsHideSecrets(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)

	req := newRequest(t, "GET", c.URL+"/echo?token=SECRET123&x=1", nil)
	req.Header.Set("Authorization", "Bearer SECRETAUTH")
	req.Header.Set("Cookie", "s=SECRETCOOKIE")
	req.Header.Set("X-Request-Id", "secret-test")
	e := echo(t, client, req)
	if e.QueryString != "token=SECRET123&x=1" {
		t.Errorf("app got query %q; a plain HTTP request passes unchanged", e.QueryString)
	}
	if v, _ := e.Header("Authorization"); v != "Bearer SECRETAUTH" {
		t.Errorf("app got Authorization %q", v)
	}
	if v, _ := e.Header("Cookie"); v != "s=SECRETCOOKIE" {
		t.Errorf("app got Cookie %q", v)
	}
	// Errors are logged with more detail than successes: a 502 with the
	// same secrets must not leak them either.
	closed := StartCablecar(t, CablecarOptions{Upstream: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))})
	req = newRequest(t, "GET", closed.URL+"/echo?token=SECRET123&x=1", nil)
	req.Header.Set("Authorization", "Bearer SECRETAUTH")
	req.Header.Set("Cookie", "s=SECRETCOOKIE")
	if resp, _ := do(t, client, req); resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}

	line := c.WaitLog(5*time.Second, "the access-log line", func(l LogLine) bool {
		return l.Str("message") == "request" && l.Str("request_id") == "secret-test"
	})
	q := line.Str("query")
	if !strings.Contains(q, "token=[FILTERED]") || !strings.Contains(q, "x=1") {
		t.Errorf("logged query %q, want token=[FILTERED] and x=1", q)
	}
	closed.WaitLog(5*time.Second, "the 502's access-log line", func(l LogLine) bool {
		return l.Str("message") == "request"
	})
	for _, inst := range []*Cablecar{c, closed} {
		logs := inst.Logs() + inst.Stdout()
		for _, secret := range []string{"SECRET123", "SECRETAUTH", "SECRETCOOKIE"} {
			if strings.Contains(logs, secret) {
				t.Errorf("%s appears in the output of cablecar %s", secret, inst.Addr)
			}
		}
	}
}

func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)
	for _, path := range []string{"/hello", "/hello", "/status/404", "/status/500"} {
		do(t, client, newRequest(t, "GET", c.URL+path, nil))
	}
	WaitFor(t, 5*time.Second, "4 requests counted", func() bool {
		return c.Metric("cablecar_proxy_requests_total") >= 4
	})
	text := c.Metrics()
	for _, check := range []struct {
		name string
		want []string
		min  float64
	}{
		{"go_goroutines", nil, 1},
		{"process_resident_memory_bytes", nil, 1},
		{"cablecar_proxy_requests_total", []string{"code=2xx"}, 2},
		{"cablecar_proxy_requests_total", []string{"code=4xx"}, 1},
		{"cablecar_proxy_requests_total", []string{"code=5xx"}, 1},
		{"cablecar_proxy_request_duration_seconds_count", []string{"code=2xx"}, 2},
		{"cablecar_proxy_request_duration_seconds_bucket", []string{"code=2xx", "le=+Inf"}, 2},
		{"cablecar_proxy_upstream_dials_total", nil, 1},
	} {
		v, ok := MetricValue(text, check.name, check.want...)
		if !ok || v < check.min {
			t.Errorf("%s%v = %v (present: %v), want at least %v", check.name, check.want, v, ok, check.min)
		}
	}
	if !strings.Contains(text, "# TYPE cablecar_proxy_upstream_errors_total counter") {
		t.Errorf("no cablecar_proxy_upstream_errors_total counter in /metrics")
	}
	if !strings.Contains(text, "# TYPE cablecar_proxy_request_duration_seconds histogram") {
		t.Errorf("cablecar_proxy_request_duration_seconds is not a histogram")
	}
}

// checkOneLineText asserts an error response Cablecar wrote itself: a
// text/plain body of one short line.
func checkOneLineText(t *testing.T, resp *http.Response, body []byte) {
	t.Helper()
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "text/plain" {
		t.Errorf("Content-Type %q, want text/plain", resp.Header.Get("Content-Type"))
	}
	text := strings.TrimSuffix(string(body), "\n")
	if text == "" || strings.Contains(text, "\n") || len(text) > 200 {
		t.Errorf("body %q, want one short line", body)
	}
}

func isWarnOrError(l LogLine) bool {
	if l.Str("section") != "" {
		return false // start-up advice about the config, not a request's trouble
	}
	switch l.Str("level") {
	case "warn", "error":
		return true
	}
	return false
}
