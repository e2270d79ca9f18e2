package callback

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
)

func waitNoGoroutine(frame string, within time.Duration) string {
	deadline := time.Now().Add(within)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var found string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, frame) {
				found = g
				break
			}
		}
		if found == "" || time.Now().After(deadline) {
			return found
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// eventually waits for cond, failing the test after a deadline.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testsupport.Eventually(t, what, 5*time.Second, cond)
}

// gotEvent is an event as the app decodes it; pointers tell absent fields
// from zero ones.
type gotEvent struct {
	ID     string  `json:"id"`
	Type   string  `json:"type"`
	Data   *string `json:"data"`
	Binary *bool   `json:"binary"`
	Code   *int    `json:"code"`
	Reason *string `json:"reason"`
	By     *string `json:"by"`
}

type gotBody struct {
	Connection struct {
		ID       string          `json:"id"`
		State    *string         `json:"state"`
		Channels []string        `json:"channels"`
		Claims   json.RawMessage `json:"claims"`
	} `json:"connection"`
	Events []gotEvent `json:"events"`
}

// appReq is one request the fake app received.
type appReq struct {
	n      int // 0-based arrival order
	method string
	uri    string
	host   string
	header http.Header
	body   []byte
	events gotBody
	at     time.Time
}

func (r *appReq) ids() []string {
	ids := make([]string, len(r.events.Events))
	for i, e := range r.events.Events {
		ids[i] = e.ID
	}
	return ids
}

// answer is how the fake app answers one request.
type answer struct {
	status int
	header map[string]string
	body   string
	delay  time.Duration
	wait   <-chan struct{} // answer only once this is closed
}

// fakeApp plays the Rack app: it records every request, counts how many
// are in flight (in all and per connection), and answers as respond says.
type fakeApp struct {
	t       *testing.T
	network string
	addr    string
	respond func(r *appReq) answer

	mu          sync.Mutex
	reqs        []*appReq
	inFlight    int
	maxInFlight int
	perConn     map[string]int
	maxPerConn  int
}

func startApp(t *testing.T, respond func(r *appReq) answer) *fakeApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveApp(t, ln, respond)
}

func startUnixApp(t *testing.T, respond func(r *appReq) answer) *fakeApp {
	t.Helper()
	dir, err := os.MkdirTemp("", "cb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := net.Listen("unix", filepath.Join(dir, "app.sock"))
	if err != nil {
		t.Fatal(err)
	}
	return serveApp(t, ln, respond)
}

func serveApp(t *testing.T, ln net.Listener, respond func(r *appReq) answer) *fakeApp {
	if respond == nil {
		respond = func(*appReq) answer { return answer{status: 204} }
	}
	a := &fakeApp{t: t, network: ln.Addr().Network(), addr: ln.Addr().String(), respond: respond, perConn: map[string]int{}}
	srv := &http.Server{Handler: a}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return a
}

func (a *fakeApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := &appReq{method: r.Method, uri: r.RequestURI, host: r.Host, header: r.Header.Clone(), body: body, at: time.Now()}
	if r.Method == http.MethodPost {
		if err := json.Unmarshal(body, &req.events); err != nil {
			a.t.Errorf("events body is not valid JSON: %v\n%s", err, body)
		}
	}
	conn := r.Header.Get("Cablecar-Connection-Id")
	a.mu.Lock()
	req.n = len(a.reqs)
	a.reqs = append(a.reqs, req)
	a.inFlight++
	a.maxInFlight = max(a.maxInFlight, a.inFlight)
	a.perConn[conn]++
	a.maxPerConn = max(a.maxPerConn, a.perConn[conn])
	respond := a.respond
	a.mu.Unlock()

	ans := respond(req)
	if ans.wait != nil {
		select {
		case <-ans.wait:
		case <-r.Context().Done():
		}
	}
	if ans.delay > 0 {
		time.Sleep(ans.delay) // the app being slow
	}
	// Out of the count before a byte of the answer leaves, so that the
	// next request of the same connection never overlaps it here.
	a.mu.Lock()
	a.inFlight--
	a.perConn[conn]--
	a.mu.Unlock()
	for k, v := range ans.header {
		w.Header().Set(k, v)
	}
	if ans.status == 0 {
		ans.status = 204
	}
	w.WriteHeader(ans.status)
	_, _ = io.WriteString(w, ans.body)
}

func (a *fakeApp) requests() []*appReq {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*appReq(nil), a.reqs...)
}

// eventIDs is every event id the app received, in arrival order, retries
// included.
func (a *fakeApp) eventIDs() []string {
	var ids []string
	for _, r := range a.requests() {
		ids = append(ids, r.ids()...)
	}
	return ids
}

func (a *fakeApp) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.reqs)
}

func (a *fakeApp) maxes() (all, perConn int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.maxInFlight, a.maxPerConn
}

// testClient is a Client on a private registry with backoff short enough
// for tests.
type testClient struct {
	*Client
	reg  *prometheus.Registry
	logs *testsupport.SyncBuffer
}

func newTestClient(t *testing.T, network, addr string, tweak func(*Config)) *testClient {
	t.Helper()
	cfg := Config{
		Network:        network,
		Address:        addr,
		ConnectTimeout: time.Second,
		Timeout:        2 * time.Second,
		Retries:        3,
		MaxInFlight:    16,
		CloseRetryFor:  5 * time.Second,
		// Compressed: a close event's tries are milliseconds apart.
		CloseBackoffCap: 20 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	logs := &testsupport.SyncBuffer{}
	reg := prometheus.NewRegistry()
	c := New(cfg, zerolog.New(logs).Level(zerolog.DebugLevel), reg)
	c.backoffBase = time.Millisecond
	c.backoffCap = 10 * time.Millisecond
	c.retryAfterCap = 2 * time.Second
	t.Cleanup(func() {
		// Streams a test left open are given up, so that no goroutine
		// outlives it.
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_ = c.Wait(ctx)
		c.Close()
	})
	return &testClient{Client: c, reg: reg, logs: logs}
}

func (a *fakeApp) client(t *testing.T, tweak func(*Config)) *testClient {
	return newTestClient(t, a.network, a.addr, tweak)
}

// inFlightGauge is cablecar_webhooks_in_flight now; safe from any
// goroutine.
func (c *testClient) inFlightGauge() int {
	var m dto.Metric
	if err := c.m.inFlight.Write(&m); err != nil {
		panic(err)
	}
	return int(m.GetGauge().GetValue())
}

// metric is the value of a counter or gauge, 0 when it has not been
// touched. labels are name, value pairs.
func (c *testClient) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := c.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// target is a fake connection.
type target struct {
	mu      sync.Mutex
	info    ConnInfo
	replies []*Reply
	fails   []Failure
	failed  chan Failure
	onFail  func(Failure)
}

func newTarget(id string) *target {
	return &target{info: ConnInfo{ID: id}, failed: make(chan Failure, 4)}
}

func (t *target) Info() ConnInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.info
}

func (t *target) Apply(r *Reply) {
	t.mu.Lock()
	t.replies = append(t.replies, r)
	if r.State != nil {
		t.info.State = *r.State
	}
	t.mu.Unlock()
}

func (t *target) Fail(why Failure) {
	t.mu.Lock()
	t.fails = append(t.fails, why)
	onFail := t.onFail
	t.mu.Unlock()
	t.failed <- why
	if onFail != nil {
		onFail(why)
	}
}

func (t *target) failCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.fails)
}

func (t *target) applied() []*Reply {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*Reply(nil), t.replies...)
}

func waitDone(t *testing.T, s *Stream) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("stream not done in time")
	}
}

func msg(s string) Event { return Event{Type: EventMessage, Data: []byte(s)} }

func closeEvent() Event { return Event{Type: EventClose, Code: 1000, By: "client"} }

func idsOf(conn string, from, to int) []string {
	var ids []string
	for n := from; n <= to; n++ {
		ids = append(ids, fmt.Sprintf("%s:%d", conn, n))
	}
	return ids
}
