package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

func TestReadiness(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := New(zerolog.Nop(), reg)
	var appErr, brokerErr error
	s.AddCheck("app", func(context.Context) error { return appErr })
	s.AddSoftCheck("broker", func(context.Context) error { return brokerErr })

	if code, body := get(t, s.mux, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, s.mux, "/readyz"); code != 200 || body != "ready\napp: ok\nbroker: ok\n" {
		t.Errorf("/readyz with passing checks = %d %q", code, body)
	}

	// A broker outage shows, but the node stays ready: plain HTTP and
	// accepts still work.
	brokerErr = errors.New("Redis: dial tcp 127.0.0.1:6380: connect: connection refused\nand more")
	if code, body := get(t, s.mux, "/readyz"); code != 200 ||
		body != "ready\napp: ok\nbroker: Redis: dial tcp 127.0.0.1:6380: connect: connection refused and more\n" {
		t.Errorf("/readyz with the broker down = %d %q", code, body)
	}

	appErr = errors.New("app not reachable at http://127.0.0.1:1")
	code, body := get(t, s.mux, "/readyz")
	if code != 503 || !strings.HasPrefix(body, "not ready\napp: app not reachable at http://127.0.0.1:1\nbroker: Redis:") {
		t.Errorf("/readyz with a failing check = %d %q", code, body)
	}

	appErr = nil
	s.Drain()
	if code, body := get(t, s.mux, "/readyz"); code != 503 || body != "not ready\nshutting down\n" {
		t.Errorf("/readyz while draining = %d %q", code, body)
	}
	if code, _ := get(t, s.mux, "/healthz"); code != 200 {
		t.Errorf("/healthz while draining = %d", code)
	}
}

// A dependency that hangs makes the probe fail after checkTimeout instead of
// hanging it.
func TestHungCheckIsNotReady(t *testing.T) {
	s := New(zerolog.Nop(), prometheus.NewRegistry())
	s.AddCheck("jwks", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		if code, body := get(t, s.mux, "/readyz"); code != 503 || !strings.Contains(body, "jwks: context deadline exceeded") {
			t.Errorf("/readyz with a hung check = %d %q", code, body)
		}
	}()
	select {
	case <-done:
	case <-time.After(checkTimeout + 10*time.Second):
		t.Fatal("/readyz hung with its check")
	}
}

func TestMetricsEndpoint(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "cablecar_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	s := New(zerolog.Nop(), reg)
	code, body := get(t, s.mux, "/metrics")
	if code != 200 || !strings.Contains(body, "cablecar_test_total 3") {
		t.Errorf("/metrics = %d %q", code, body)
	}
	rec := httptest.NewRecorder()
	s.mux.ServeHTTP(rec, httptest.NewRequest("POST", "/healthz", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d", rec.Code)
	}
}
