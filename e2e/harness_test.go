package e2e

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

// These tests check the harness and the test app on their own, without the
// binary, so a failure elsewhere can be trusted to be Cablecar's.

func TestHarnessRedisRestart(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	if !strings.HasPrefix(r.URL, "redis://127.0.0.1:") {
		t.Fatalf("URL = %q", r.URL)
	}
	r.Stop()
	if err := r.Ping(); err == nil {
		t.Fatal("PING answered after Stop")
	}
	r.Restart()
	if err := r.Ping(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
}

// TestAppDirect checks the Rack app's endpoints against Puma itself, over
// TCP and over a Unix socket.
func TestAppDirect(t *testing.T) {
	t.Parallel()
	for _, unix := range []bool{false, true} {
		name := "tcp"
		if unix {
			name = "unix"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := StartPuma(t, PumaOptions{Unix: unix})
			c := p.Client()

			resp, body := do(t, c, newRequest(t, "GET", p.URL+"/hello", nil))
			if resp.StatusCode != 200 || string(body) != "hello world\n" || resp.Header.Get("Content-Type") != "text/plain" {
				t.Fatalf("/hello: %d %q %v", resp.StatusCode, body, resp.Header)
			}

			payload := []byte("some body")
			req := newRequest(t, "PATCH", p.URL+"/echo?a=1&b=2", bytes.NewReader(payload))
			req.Header.Set("X-Custom-Thing", "v1")
			e := echo(t, c, req)
			if e.Method != "PATCH" || e.Path != "/echo" || e.QueryString != "a=1&b=2" ||
				e.BodySize != int64(len(payload)) || e.BodySHA256 != sha256Hex(payload) {
				t.Fatalf("/echo: %+v", e)
			}
			if v, _ := e.Header("X-Custom-Thing"); v != "v1" {
				t.Fatalf("/echo headers: %v", e.Headers)
			}
			if unix && e.Peer != "unix" || !unix && !strings.HasPrefix(e.Peer, "127.0.0.1:") {
				t.Fatalf("/echo peer = %q", e.Peer)
			}

			body3, sum := prngBody(3<<20+17, 3)
			e = echo(t, c, newRequest(t, "PUT", p.URL+"/upload", body3))
			if e.BodySize != 3<<20+17 || e.BodySHA256 != sum() {
				t.Fatalf("/upload: %+v", e)
			}

			resp, body = do(t, c, newRequest(t, "HEAD", p.URL+"/hello", nil))
			if resp.ContentLength != 12 || len(body) != 0 {
				t.Fatalf("HEAD /hello: Content-Length %d, body %q", resp.ContentLength, body)
			}

			resp, _ = do(t, c, newRequest(t, "GET", p.URL+"/status/418", nil))
			if resp.StatusCode != 418 {
				t.Fatalf("/status/418: %d", resp.StatusCode)
			}

			resp, _ = do(t, c, newRequest(t, "GET", p.URL+"/response-headers", nil))
			if resp.Header.Get("X-App") != "yes" || len(resp.Header.Values("X-App-Multi")) != 2 || len(resp.Cookies()) != 2 {
				t.Fatalf("/response-headers: %v", resp.Header)
			}

			if n := p.Hits("/never"); n != 0 {
				t.Fatalf("hits for /never = %d", n)
			}
			if n := p.Hits("/hello"); n != 2 {
				t.Fatalf("hits for /hello = %d, want 2", n)
			}
		})
	}
}

// TestAppStreamsDirect proves the premise of the proxy streaming tests:
// Puma itself sends each event of a held stream before the next is
// released. (Puma corks its TCP socket for a response, so each part may wait
// up to the kernel's 200 ms cork limit; it still arrives on its own.)
func TestAppStreamsDirect(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	for _, tc := range []struct{ path, ctype, line1, line2 string }{
		{"/sse", "text/event-stream", "data: 1", "data: 2"},
		{"/chunked", "text/plain", "chunk 1", "chunk 2"},
	} {
		id := uniqueID(t) + tc.path
		s := openStream(t, p.Client(), p.URL+tc.path+"?n=2&id="+id)
		if s.resp.Header.Get("Content-Type") != tc.ctype || s.resp.TransferEncoding[0] != "chunked" {
			t.Fatalf("%s: headers %v %v", tc.path, s.resp.Header, s.resp.TransferEncoding)
		}
		s.expect(t, tc.line1, 5*time.Second, "first event, before any release")
		if tc.path == "/sse" {
			s.expect(t, "", time.Second, "end of event 1")
		}
		p.Release(id)
		s.expect(t, tc.line2, 5*time.Second, "second event, after one release")
		if tc.path == "/sse" {
			s.expect(t, "", time.Second, "end of event 2")
		}
		s.expectEnd(t, 5*time.Second)
	}
}

// TestAppHoldIsBounded: a stream nobody releases ends on its own.
func TestAppHoldIsBounded(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	start := time.Now()
	s := openStream(t, p.Client(), p.URL+"/chunked?n=5&hold=0.3&id="+uniqueID(t))
	s.expect(t, "chunk 1", 5*time.Second, "first chunk")
	s.expectEnd(t, 5*time.Second)
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("held stream took %s to end", d)
	}
}

func TestHarnessMetricValue(t *testing.T) {
	text := `# HELP x_total things
# TYPE x_total counter
x_total{code="2xx",method="GET"} 3
x_total{code="2xx",method="POST"} 2
x_total{code="5xx",reason="a \"quoted\", thing"} 1
y_seconds_bucket{code="2xx",le="+Inf"} 7
plain 4.5 1700000000
`
	for _, tc := range []struct {
		name  string
		want  []string
		value float64
		found bool
	}{
		{"x_total", nil, 6, true},
		{"x_total", []string{"code=2xx"}, 5, true},
		{"x_total", []string{"code=2xx", "method=POST"}, 2, true},
		{"x_total", []string{`reason=a "quoted", thing`}, 1, true},
		{"x_total", []string{"code=4xx"}, 0, false},
		{"y_seconds_bucket", []string{"le=+Inf"}, 7, true},
		{"plain", nil, 4.5, true},
		{"missing", nil, 0, false},
	} {
		v, ok := MetricValue(text, tc.name, tc.want...)
		if v != tc.value || ok != tc.found {
			t.Errorf("MetricValue(%s, %v) = %v, %v; want %v, %v", tc.name, tc.want, v, ok, tc.value, tc.found)
		}
	}
}

func TestHarnessMergeConfig(t *testing.T) {
	cfg := harnessConfig("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3")
	mergeConfig(cfg, map[string]any{
		"proxy.response_timeout": "1s",
		"proxy":                  map[string]any{"max_conns": 4},
		"log.level":              nil,
		"broker":                 map[string]any{"url": "redis://x"},
	})
	proxy := cfg["proxy"].(map[string]any)
	if proxy["response_timeout"] != "1s" || proxy["max_conns"] != 4 || proxy["connect_timeout"] != "2s" {
		t.Fatalf("proxy = %v", proxy)
	}
	if _, ok := cfg["log"].(map[string]any)["level"]; ok {
		t.Fatalf("log.level not removed: %v", cfg["log"])
	}
	if cfg["broker"].(map[string]any)["url"] != "redis://x" {
		t.Fatalf("broker = %v", cfg["broker"])
	}
}

// statusOf is the status of GET url, or 0 if the request failed.
func statusOf(client *http.Client, url string) int {
	code, _, err := get(client, url, 2*time.Second)
	if err != nil {
		return 0
	}
	return code
}
