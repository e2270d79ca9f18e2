package callback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
)

func lostRecord() registry.ConnRecord {
	return registry.ConnRecord{
		ID:   "c_nodeAAAAxxxxxxxxxxxxxxxx",
		Path: "/cable?room=1",
		Headers: [][2]string{{"Host", "chat.example.com"}, {"Cookie", "session=abc"},
			{"X-Forwarded-Proto", "https"}, {"Content-Length", "99"}},
		State:    "st-1",
		Channels: []string{"room:1", "user:7"},
		Claims:   json.RawMessage(`{"sub":"u7"}`),
	}
}

var lostClose = Event{Code: 1006, By: "node_lost"}

// lost posts rec's close event through PostLost, stopped when the test
// ends; the returned channel is closed once the event settled.
func lost(t *testing.T, c *testClient, rec registry.ConnRecord) <-chan struct{} {
	t.Helper()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	settled := make(chan struct{})
	if err := c.PostLost(rec, lostClose, stop, func() { close(settled) }); err != nil {
		t.Fatal(err)
	}
	return settled
}

func waitSettled(t *testing.T, settled <-chan struct{}) {
	t.Helper()
	select {
	case <-settled:
	case <-time.After(5 * time.Second):
		t.Fatal("the close event did not settle within 5s")
	}
}

func TestPostLost(t *testing.T) {
	const secret = "s3cret"
	var sigErr atomic.Value
	app := startApp(t, func(r *appReq) answer {
		if err := auth.NewSigner([]string{secret}).Verify(r.header.Get("Cablecar-Signature"), r.body, time.Now(), time.Minute); err != nil {
			sigErr.Store(err)
		}
		return answer{status: 200, header: map[string]string{"Content-Type": "application/json"},
			body: `{"send":["nobody hears this"],"close":{"code":4000}}`}
	})
	c := app.client(t, func(cfg *Config) { cfg.Secrets = []string{secret} })
	rec := lostRecord()
	waitSettled(t, lost(t, c, rec))
	reqs := app.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if err, _ := sigErr.Load().(error); err != nil {
		t.Errorf("signature: %v", err)
	}
	if r.method != "POST" || r.uri != rec.Path || r.host != "chat.example.com" {
		t.Errorf("request %s %s host %s", r.method, r.uri, r.host)
	}
	for k, want := range map[string]string{
		"Cookie": "session=abc", "X-Forwarded-Proto": "https", "Cablecar-Connection-Id": rec.ID,
		"Content-Type": "application/json",
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	b := r.events
	if b.Connection.ID != rec.ID || b.Connection.State == nil || *b.Connection.State != "st-1" ||
		!slices.Equal(b.Connection.Channels, rec.Channels) || string(b.Connection.Claims) != `{"sub":"u7"}` {
		t.Errorf("connection %+v", b.Connection)
	}
	if len(b.Events) != 1 {
		t.Fatalf("events %+v", b.Events)
	}
	ev := b.Events[0]
	if ev.ID != rec.ID+":9007199254740991" || ev.Type != "close" || ev.Code == nil || *ev.Code != 1006 ||
		ev.By == nil || *ev.By != "node_lost" || ev.Reason == nil || *ev.Reason != "" {
		t.Errorf("close event %+v", ev)
	}
	// The id's number is read exactly by a JSON parser that reads numbers
	// as doubles.
	n, _ := strconv.ParseUint(ev.ID[len(rec.ID)+1:], 10, 64)
	if float64(n) != float64(LostCloseN) || uint64(float64(n)) != n {
		t.Errorf("event number %d is not exact as a double", n)
	}
	if got := c.metric(t, "cablecar_webhook_events_total"); got != 1 {
		t.Errorf("events delivered %v", got)
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 0 {
		t.Errorf("close events dropped %v", got)
	}
}

func TestPostLostRetries(t *testing.T) {
	var n atomic.Int32
	app := startApp(t, func(*appReq) answer {
		if n.Add(1) <= 2 {
			return answer{status: 500}
		}
		return answer{status: 204}
	})
	c := app.client(t, nil)
	rec := lostRecord()
	waitSettled(t, lost(t, c, rec))
	want := []string{rec.ID + ":9007199254740991", rec.ID + ":9007199254740991", rec.ID + ":9007199254740991"}
	if got := app.eventIDs(); !slices.Equal(got, want) {
		t.Errorf("ids %v, want the same id three times", got)
	}
	if got := c.metric(t, "cablecar_webhook_retries_total"); got != 2 {
		t.Errorf("retries %v", got)
	}
}

// Settled, and so its record deleted, whatever ended it: 410, a refusal,
// close_retry_for running out.
func TestPostLostSettles(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		retry   time.Duration
		dropped float64
		reason  string
	}{
		{"gone", 410, 0, 0, ""},
		{"rejected", 422, 0, 1, "rejected"},
		{"retries run out", 503, 150 * time.Millisecond, 1, "retry_limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := startApp(t, func(*appReq) answer { return answer{status: tc.status} })
			c := app.client(t, func(cfg *Config) {
				if tc.retry > 0 {
					cfg.CloseRetryFor = tc.retry
				}
			})
			waitSettled(t, lost(t, c, lostRecord()))
			if got := c.metric(t, "cablecar_close_events_dropped_total"); got != tc.dropped {
				t.Errorf("close events dropped %v, want %v", got, tc.dropped)
			}
			if tc.reason != "" {
				if got := c.metric(t, "cablecar_events_dropped_total", "reason", tc.reason); got != 1 {
					t.Errorf("events dropped (%s) %v, want 1", tc.reason, got)
				}
			}
		})
	}
}

// The crawl this replaced: a survivor posting a lost node's close events
// while the app is down must not wait for them. PostLost returns at once
// for each, every one gets its tries from the close queue — no more at a
// time than the global cap — and each settles once the app is back.
func TestPostLostDoesNotWaitForTheApp(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	app := startApp(t, func(*appReq) answer {
		if down.Load() {
			return answer{status: 503}
		}
		return answer{status: 204}
	})
	c := app.client(t, func(cfg *Config) { cfg.MaxInFlight = 4; cfg.CloseRetryFor = time.Minute })
	stop := make(chan struct{})
	defer close(stop)
	const n = 200
	var settled atomic.Int32
	for i := range n {
		rec := lostRecord()
		rec.ID = fmt.Sprintf("c_nodeAAAA%016d", i)
		if err := c.PostLost(rec, lostClose, stop, func() { settled.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	// Posting returned before the app took anything.
	if got := settled.Load(); got != 0 {
		t.Fatalf("%d settled while the app is down", got)
	}
	eventually(t, "every close event tried while the app is down", func() bool {
		seen := map[string]bool{}
		for _, r := range app.requests() {
			seen[r.events.Connection.ID] = true
		}
		return len(seen) == n
	})
	if got := c.metric(t, "cablecar_close_events_pending"); got != n {
		t.Errorf("pending gauge %v, want %d", got, n)
	}
	down.Store(false)
	eventually(t, "every close event settled once the app is back", func() bool { return settled.Load() == n })
	if all, _ := app.maxes(); all > 4 {
		t.Errorf("%d requests at once, more than the global cap of 4", all)
	}
}

// stop closes first: the event is abandoned, not settled and not counted
// as dropped (the record is still the caller's to post again), and the
// queue lets it go.
func TestPostLostStopped(t *testing.T) {
	app := startApp(t, func(*appReq) answer { return answer{status: 500} })
	c := app.client(t, nil)
	stop := make(chan struct{})
	var settled atomic.Bool
	if err := c.PostLost(lostRecord(), lostClose, stop, func() { settled.Store(true) }); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a failed try", func() bool { return app.count() > 0 })
	close(stop)
	eventually(t, "the queue to let it go", func() bool { return c.metric(t, "cablecar_close_events_pending") == 0 })
	if settled.Load() {
		t.Error("an abandoned close event settled: its record would be deleted")
	}
	for _, m := range []string{"cablecar_close_events_dropped_total", "cablecar_close_events_abandoned_total"} {
		if got := c.metric(t, m); got != 0 {
			t.Errorf("%s %v, want 0: abandoned, its record kept", m, got)
		}
	}
}

// Shutdown gave up (Wait's ctx ended): what waits is abandoned, and
// nothing more is taken.
func TestPostLostShutdown(t *testing.T) {
	release := make(chan struct{})
	app := startApp(t, func(*appReq) answer { return answer{status: 500, wait: release} })
	defer close(release)
	c := app.client(t, nil)
	// A live connection of this node keeps Wait waiting.
	s := c.NewStream(newTarget("c_live"), "c_live", "/", nil)
	s.Push(closeEvent())
	var settled atomic.Bool
	if err := c.PostLost(lostRecord(), lostClose, nil, func() { settled.Store(true) }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_ = c.Wait(ctx)
	if err := c.PostLost(lostRecord(), lostClose, nil, func() {}); !errors.Is(err, ErrShutdown) {
		t.Errorf("PostLost after shutdown gave up: %v, want ErrShutdown", err)
	}
	eventually(t, "the queue to empty", func() bool { return c.metric(t, "cablecar_close_events_pending") == 0 })
	if settled.Load() {
		t.Error("a close event abandoned on shutdown settled")
	}
}

// A full queue takes no more of a lost node's close events — their
// records wait in Redis — and pushes none out.
func TestPostLostQueueFull(t *testing.T) {
	app := startApp(t, func(*appReq) answer { return answer{status: 503} })
	c := app.client(t, func(cfg *Config) { cfg.MaxPendingCloses = 2 })
	stop := make(chan struct{})
	defer close(stop)
	for i := range 3 {
		rec := lostRecord()
		rec.ID = fmt.Sprintf("c_nodeAAAA%016d", i)
		err := c.PostLost(rec, lostClose, stop, func() {})
		if want := i == 2; errors.Is(err, ErrClosesFull) != want {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 0 {
		t.Errorf("close events dropped %v: none may be pushed out by a lost node's", got)
	}
}

func TestPostLostRefusesOtherEvents(t *testing.T) {
	c := newTestClient(t, "tcp", "127.0.0.1:1", nil)
	if err := c.PostLost(lostRecord(), Event{Type: EventMessage}, nil, func() {}); err == nil {
		t.Error("a message event was accepted")
	}
	if err := c.PostLost(registry.ConnRecord{ID: "c_1"}, lostClose, nil, func() {}); err == nil {
		t.Error("a record without a path was accepted")
	}
}

// recordingPublisher is a broker that keeps what it was asked to publish.
type recordingPublisher struct {
	mu   sync.Mutex
	msgs []pubsub.Message
}

func (p *recordingPublisher) Publish(_ context.Context, msgs ...pubsub.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, msgs...)
	return nil
}

// The reply to a lost connection's close event is carried out as far as
// it reaches other connections: the room hears the app's leave notice.
// The rest (send, close, state) has no socket to act on.
func TestPostLostPublishes(t *testing.T) {
	app := startApp(t, func(*appReq) answer {
		return answer{status: 200, header: map[string]string{"Content-Type": "application/json"},
			body: `{"send":["nobody"],"publish":[{"channel":"room:1","data":"u7 left","except_self":true},{"channel":"room:1","data":"AAE=","binary":true}],"close":{"code":4000}}`}
	})
	c := app.client(t, nil)
	pub := &recordingPublisher{}
	c.SetPublisher(pub)
	waitSettled(t, lost(t, c, lostRecord()))
	pub.mu.Lock()
	defer pub.mu.Unlock()
	want := []pubsub.Message{{Channel: "room:1", Data: []byte("u7 left")}, {Channel: "room:1", Data: []byte{0, 1}, Binary: true}}
	if len(pub.msgs) != len(want) {
		t.Fatalf("published %+v, want %+v", pub.msgs, want)
	}
	for i, m := range pub.msgs {
		if m.Channel != want[i].Channel || string(m.Data) != string(want[i].Data) || m.Binary != want[i].Binary || m.Except != "" {
			t.Errorf("message %d: %+v, want %+v", i, m, want[i])
		}
	}
}
