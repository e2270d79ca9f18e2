package admin

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
)

// fakeParts registers series named and labelled as the real parts
// register theirs (upgrade/metrics.go, callback/metrics.go,
// pubsub/redis_metrics.go), for the status page to read.
type fakeParts struct {
	conns                    prometheus.Gauge
	upgrades, closes         *prometheus.CounterVec
	messages, webhooks       *prometheus.CounterVec
	duration                 *prometheus.HistogramVec
	retries                  prometheus.Counter
	inFlight, pending, up    prometheus.Gauge
	disconnects, outageTotal prometheus.Counter
}

func newFakeParts(reg prometheus.Registerer) *fakeParts {
	f := &fakeParts{
		conns:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "cablecar_connections", Help: "h"}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cablecar_upgrades_total", Help: "h"}, []string{"result", "reason"}),
		closes:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cablecar_closes_total", Help: "h"}, []string{"by"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cablecar_messages_total", Help: "h"}, []string{"direction"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cablecar_webhooks_total", Help: "h"}, []string{"kind", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cablecar_webhook_duration_seconds", Help: "h",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 17)}, []string{"kind"}),
		retries:     prometheus.NewCounter(prometheus.CounterOpts{Name: "cablecar_webhook_retries_total", Help: "h"}),
		inFlight:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "cablecar_webhooks_in_flight", Help: "h"}),
		pending:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cablecar_close_events_pending", Help: "h"}),
		up:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "cablecar_broker_connected", Help: "h"}),
		disconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "cablecar_broker_disconnects_total", Help: "h"}),
		outageTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "cablecar_broker_outage_seconds_total", Help: "h"}),
	}
	reg.MustRegister(f.conns, f.upgrades, f.closes, f.messages, f.webhooks, f.duration, f.retries, f.inFlight,
		f.pending, f.up, f.disconnects, f.outageTotal)
	f.upgrades.WithLabelValues("accepted", "app")
	return f
}

// statusServer is an admin server with the status page over fake parts.
func statusServer(t *testing.T, key string, src StatusSources) (*Server, *fakeParts) {
	t.Helper()
	reg := prometheus.NewRegistry()
	f := newFakeParts(reg)
	s := New(zerolog.Nop(), reg)
	s.EnableAPI(&recorder{}, key)
	s.EnableStatus(src)
	return s, f
}

func getStatus(t *testing.T, s *Server, key string) Status {
	t.Helper()
	req := httptest.NewRequest("GET", "/status.json", nil)
	req.Host = "127.0.0.1:9394"
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("GET /status.json: %d %s", rec.Code, rec.Body)
	}
	var st Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("GET /status.json: %v\n%s", err, rec.Body)
	}
	return st
}

// scrape is what GET /metrics says, series by series: `name{labels}` →
// value, as written in the text format.
func scrape(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Host = "127.0.0.1:9394"
	s.ServeHTTP(rec, req)
	out := map[string]float64{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// The totals on the page are what /metrics says of the same series at
// the same moment.
func TestStatusMatchesMetrics(t *testing.T) {
	s, f := statusServer(t, "", StatusSources{Node: "n1", Version: "v9", MaxInFlight: 64, Broker: "redis"})
	f.conns.Set(17)
	f.upgrades.WithLabelValues("accepted", "app").Add(40)
	f.upgrades.WithLabelValues("rejected", "origin").Add(3)
	f.upgrades.WithLabelValues("rejected", "app").Add(5)
	f.messages.WithLabelValues("in").Add(1234)
	f.messages.WithLabelValues("out").Add(98765)
	f.webhooks.WithLabelValues("accept", "ok").Add(40)
	f.webhooks.WithLabelValues("events", "ok").Add(900)
	f.webhooks.WithLabelValues("events", "failed").Add(7)
	f.webhooks.WithLabelValues("events", "timeout").Add(2)
	f.webhooks.WithLabelValues("events", "rejected").Add(4)
	f.retries.Add(9)
	f.inFlight.Set(3)
	f.pending.Set(2)
	f.closes.WithLabelValues("client").Add(20)
	f.closes.WithLabelValues("slow").Add(3)
	f.up.Set(1)
	f.disconnects.Add(2)
	f.outageTotal.Add(4.5)

	st := getStatus(t, s, "")
	m := scrape(t, s)
	checks := []struct {
		what      string
		page, met float64
	}{
		{"connections", st.Connections, m["cablecar_connections"]},
		{"accepts", st.Accepts.Total, m[`cablecar_upgrades_total{reason="app",result="accepted"}`]},
		{"refusals", st.Refusals.Total, m[`cablecar_upgrades_total{reason="origin",result="rejected"}`] + m[`cablecar_upgrades_total{reason="app",result="rejected"}`]},
		{"messages in", st.MessagesIn.Total, m[`cablecar_messages_total{direction="in"}`]},
		{"messages out", st.MessagesOut.Total, m[`cablecar_messages_total{direction="out"}`]},
		{"webhooks", st.Webhooks.Total, 40 + 900 + 7 + 2 + 4},
		{"retries", st.Webhooks.Retries.Total, m["cablecar_webhook_retries_total"]},
		{"failures", st.Webhooks.Failures.Total, m[`cablecar_webhooks_total{kind="events",outcome="failed"}`] + m[`cablecar_webhooks_total{kind="events",outcome="timeout"}`]},
		{"in flight", st.Webhooks.InFlight, m["cablecar_webhooks_in_flight"]},
		{"closes pending", st.Webhooks.ClosesPending, m["cablecar_close_events_pending"]},
		{"disconnects", st.Broker.Disconnects, m["cablecar_broker_disconnects_total"]},
		{"outage total", st.Broker.OutageSecondsTotal, m["cablecar_broker_outage_seconds_total"]},
	}
	for _, c := range checks {
		if c.page != c.met || c.met == 0 {
			t.Errorf("%s: page %v, /metrics %v", c.what, c.page, c.met)
		}
	}
	wantCounts(t, "closes", st.Closes, []Count{{"client", m[`cablecar_closes_total{by="client"}`], 0}, {"slow", m[`cablecar_closes_total{by="slow"}`], 0}})
	wantCounts(t, "refusals", st.Refusals.ByReason, []Count{{"app", 5, 0}, {"origin", 3, 0}})
	wantCounts(t, "outcomes", st.Webhooks.Outcomes, []Count{{"ok", 940, 0}, {"failed", 7, 0}, {"rejected", 4, 0}, {"timeout", 2, 0}})
	if st.Node != "n1" || st.Version != "v9" || st.Webhooks.MaxInFlight != 64 || st.Broker.Kind != "redis" || !st.Broker.OK {
		t.Errorf("identity and settings: %+v", st)
	}
	// Without Redis's list this node is the only one; presence is not
	// in use: an empty list, not null.
	if len(st.Nodes) != 1 || st.Nodes[0] != (NodeStatus{ID: "n1", Self: true, Alive: true, Connections: 17}) {
		t.Errorf("nodes = %+v", st.Nodes)
	}
	if st.Presence == nil || len(st.Presence) != 0 || st.Channels.Top == nil {
		t.Errorf("presence = %#v, top channels = %#v: want empty lists", st.Presence, st.Channels.Top)
	}
	// Before two readings there is no rate.
	if st.WindowSeconds != 0 || st.MessagesIn.PerSecond != 0 || st.Webhooks.P50MS != nil {
		t.Errorf("rates before any reading: window %v, messages in %v/s, p50 %v", st.WindowSeconds, st.MessagesIn.PerSecond, st.Webhooks.P50MS)
	}
}

func wantCounts(t *testing.T, what string, got, want []Count) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s = %+v, want %+v", what, got, want)
		return
	}
	for i := range want {
		if got[i].Name != want[i].Name || got[i].Total != want[i].Total {
			t.Errorf("%s = %+v, want %+v", what, got, want)
			return
		}
	}
}

// Rates are over the readings of the last rateWindow seconds; latencies
// are estimated from the histogram's buckets over the same window, as
// Prometheus' histogram_quantile does; the charts get a point a second.
func TestStatusRatesAndLatency(t *testing.T) {
	s, f := statusServer(t, "", StatusSources{})
	p := s.status
	t0 := time.Unix(1_800_000_000, 0)
	p.sampler.tick(t0)
	// Over the next 4 seconds: 100 webhooks, 90 in the (1 ms, 2 ms]
	// bucket and 10 in (64 ms, 128 ms]; 400 messages in.
	for i := 1; i <= 4; i++ {
		f.messages.WithLabelValues("in").Add(100)
		f.webhooks.WithLabelValues("events", "ok").Add(25)
		f.conns.Set(float64(i))
		p.sampler.tick(t0.Add(time.Duration(i) * time.Second))
	}
	for range 90 {
		f.duration.WithLabelValues("events").Observe(0.0015)
	}
	for range 10 {
		f.duration.WithLabelValues("accept").Observe(0.1)
	}
	st, err := p.snapshot(context.Background(), t0.Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st.WindowSeconds != 5 || st.MessagesIn.PerSecond != 80 || st.Webhooks.PerSecond != 20 {
		t.Errorf("over %vs: messages in %v/s (want 80), webhooks %v/s (want 20)", st.WindowSeconds, st.MessagesIn.PerSecond, st.Webhooks.PerSecond)
	}
	// p50: rank 50 of 90 in (1, 2] ms → 1 + 50/90; p99: rank 99, 9 of
	// the 10 in (64, 128] → 64 + 64·9/10.
	if p50, p99 := st.Webhooks.P50MS, st.Webhooks.P99MS; p50 == nil || p99 == nil ||
		math.Abs(*p50-1.56) > 0.01 || math.Abs(*p99-121.6) > 0.01 {
		t.Errorf("p50, p99 = %v, %v; want 1.56, 121.6", deref(p50), deref(p99))
	}
	h := st.History
	if len(h.T) != 4 || h.T[0] != t0.Unix()+1 || h.T[3] != t0.Unix()+4 || h.MessagesIn[2] != 100 || h.Webhooks[3] != 25 ||
		h.Connections[3] != 4 || h.P50MS[3] != nil {
		t.Errorf("history = %+v", h)
	}

	// Past 5 minutes the oldest points go; the rest stay in order; the
	// rates are over the last rateWindow seconds only.
	for i := 5; i < 5+historyLen; i++ {
		p.sampler.tick(t0.Add(time.Duration(i) * time.Second))
	}
	st, _ = p.snapshot(context.Background(), t0.Add(time.Duration(5+historyLen)*time.Second))
	h = st.History
	if len(h.T) != historyLen || h.T[0] != t0.Unix()+5 || h.T[historyLen-1] != t0.Unix()+4+historyLen {
		t.Errorf("history after 5 minutes: %d points, from %d to %d", len(h.T), h.T[0], h.T[len(h.T)-1])
	}
	if st.WindowSeconds != rateWindow+1 || st.MessagesIn.PerSecond != 0 || st.Webhooks.P99MS != nil {
		t.Errorf("an idle window: %vs, %v/s, p99 %v", st.WindowSeconds, st.MessagesIn.PerSecond, deref(st.Webhooks.P99MS))
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

// The sources the sidecar gives: channels, nodes from Redis (this one
// marked), the broker's state and how long its outage lasts, presence
// where it is used.
func TestStatusSources(t *testing.T) {
	down := time.Now().Add(-42 * time.Second)
	calls, presenceCalls := 0, 0
	s, _ := statusServer(t, "", StatusSources{
		Node:   "me",
		Broker: "redis",
		Channels: func(n int) ([]ChannelCount, int) {
			calls++
			return []ChannelCount{{"room:1", 5}, {"room:2", 1}}[:min(n, 2)], 2
		},
		Nodes: func(context.Context) ([]NodeStatus, error) {
			return []NodeStatus{{ID: "me", Alive: true, Connections: 3}, {ID: "other", Alive: false, Connections: 7}}, nil
		},
		BrokerReady: func(context.Context) error { return errors.New("Redis: connection refused") },
		DownSince:   func() time.Time { return down },
		Presence: func(int) []PresenceCount {
			presenceCalls++
			return []PresenceCount{{"room:1", 2}}
		},
	})
	st := getStatus(t, s, "")
	if st.Channels.Total != 2 || len(st.Channels.Top) != 2 || st.Channels.Top[0] != (ChannelCount{"room:1", 5}) {
		t.Errorf("channels = %+v", st.Channels)
	}
	if len(st.Nodes) != 2 || !st.Nodes[0].Self || st.Nodes[1].Self || st.Nodes[1].Alive || st.Nodes[1].Connections != 7 {
		t.Errorf("nodes = %+v", st.Nodes)
	}
	if b := st.Broker; b.OK || b.Error != "Redis: connection refused" || b.OutageSeconds < 42 || b.OutageSeconds > 60 {
		t.Errorf("broker = %+v", b)
	}
	if len(st.Presence) != 1 || st.Presence[0] != (PresenceCount{"room:1", 2}) {
		t.Errorf("presence = %+v", st.Presence)
	}
	// Several people watching cost one walk of the channels a second.
	getStatus(t, s, "")
	if calls != 1 || presenceCalls != 1 {
		t.Errorf("two snapshots within a second walked the channels %d times and read presence %d times, want 1 and 1", calls, presenceCalls)
	}
	failing, _ := statusServer(t, "", StatusSources{Node: "me",
		Nodes: func(context.Context) ([]NodeStatus, error) { return nil, errors.New("Redis: i/o timeout") }})
	if st := getStatus(t, failing, ""); st.NodesError != "Redis: i/o timeout" || st.Nodes == nil || len(st.Nodes) != 0 {
		t.Errorf("nodes when Redis cannot be asked: %+v, %q", st.Nodes, st.NodesError)
	}
}

// The page is served to whoever the guard lets through; its data needs
// the key, in Authorization and nowhere else; the guard's rules stand on
// both paths.
func TestStatusPageAuthAndGuard(t *testing.T) {
	s, _ := statusServer(t, "s3cret", StatusSources{Node: "n1"})
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") ||
		!strings.Contains(rec.Body.String(), "Cablecar status") || strings.Contains(rec.Body.String(), "n1") {
		t.Errorf("GET / = %d %s, want the page, holding no data", rec.Code, rec.Header())
	}
	csp := rec.Header().Get("Content-Security-Policy")
	script := regexp.MustCompile(`(?s)<script>(.*)</script>`).FindSubmatch(statusHTML)
	sum := sha256.Sum256(script[1])
	if !strings.Contains(csp, "script-src 'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'") ||
		!strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "form-action 'none'") || rec.Header().Get("X-Frame-Options") != "DENY" {
		t.Errorf("GET /: CSP %q, X-Frame-Options %q", csp, rec.Header().Get("X-Frame-Options"))
	}
	for _, path := range []string{"/index.html", "/status", "/x/"} {
		if code, _ := get(t, s, path); code != 404 {
			t.Errorf("GET %s = %d, want 404 (only / is the page)", path, code)
		}
	}

	for _, c := range []struct {
		what, auth string
		want       int
	}{
		{"no key", "", 401},
		{"a wrong key", "Bearer nope", 401},
		{"the key, not as a bearer", "s3cret", 401},
		{"the key", "Bearer s3cret", 200},
	} {
		req := httptest.NewRequest("GET", "/status.json", nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("/status.json with %s: %d, want %d", c.what, rec.Code, c.want)
		}
	}
	// Whichever was enabled first, the data takes the API's key.
	late := New(zerolog.Nop(), prometheus.NewRegistry())
	late.EnableStatus(StatusSources{})
	late.EnableAPI(&recorder{}, "s3cret")
	if code, _ := get(t, late, "/status.json"); code != 401 {
		t.Errorf("/status.json, the key set after the page: %d without it, want 401", code)
	}
	// A key in the URL is no key.
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/status.json?api_key=s3cret&token=s3cret", nil))
	if rec.Code != 401 {
		t.Errorf("/status.json with the key in the query: %d, want 401", rec.Code)
	}

	// Another site's page, key or not; a DNS name without a key.
	for _, path := range []string{"/", "/status.json"} {
		req := httptest.NewRequest("GET", path, nil)
		req.Header.Set("Origin", "http://evil.example")
		req.Header.Set("Authorization", "Bearer s3cret")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != 403 {
			t.Errorf("GET %s from another origin: %d, want 403", path, rec.Code)
		}
	}
	open, _ := statusServer(t, "", StatusSources{})
	for _, path := range []string{"/", "/status.json"} {
		req := httptest.NewRequest("GET", path, nil)
		req.Host = "rebound.example:9394"
		rec := httptest.NewRecorder()
		open.ServeHTTP(rec, req)
		if rec.Code != 403 {
			t.Errorf("GET %s by a DNS name without a key: %d, want 403", path, rec.Code)
		}
	}
}

// The sampler runs while the listener serves, and stops with it (the
// package's leak check fails otherwise).
func TestStatusSamplerRunsWhileServing(t *testing.T) {
	s, f := statusServer(t, "", StatusSources{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	f.conns.Set(5)
	deadline := time.Now().Add(10 * time.Second)
	for len(s.status.sampler.history().T) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no point sampled within 10s of serving")
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/status.json")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /status.json over the network: %v %v", resp, err)
	}
	resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// BenchmarkStatusSample is the sampler's work each second on a registry
// of Cablecar's series (StatusSources.Metrics); WithRuntime adds the Go
// and process collectors, which the sidecar keeps out of it.
func BenchmarkStatusSample(b *testing.B) {
	b.Run("Cablecar", func(b *testing.B) { benchSample(b, prometheus.NewRegistry()) })
	b.Run("WithRuntime", func(b *testing.B) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		benchSample(b, reg)
	})
}

func benchSample(b *testing.B, reg *prometheus.Registry) {
	f := newFakeParts(reg)
	for _, k := range []string{"accept", "events"} {
		for _, o := range []string{"ok", "invalid", "rejected", "gone", "failed", "timeout", "unreachable"} {
			f.webhooks.WithLabelValues(k, o).Inc()
		}
		f.duration.WithLabelValues(k).Observe(0.01)
	}
	s := &sampler{g: reg, log: zerolog.Nop()}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Second)
		s.tick(now)
	}
}
