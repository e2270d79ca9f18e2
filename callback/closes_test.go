package callback

import (
	"context"
	"fmt"
	stdmaps "maps"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"weak"

	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
)

// afterCounter counts the calls of a PushClose's after, by connection.
type afterCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (a *afterCounter) fn(id string) func() {
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.n == nil {
			a.n = map[string]int{}
		}
		a.n[id]++
	}
}

func (a *afterCounter) calls() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return stdmaps.Clone(a.n)
}

func (p *recordingPublisher) all() []pubsub.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.msgs)
}

// A close event outlives an app outage many times longer than the
// open/message retries (SPEC §3): the app fails 40 times, then takes it;
// it arrives with the same id every time and is counted delivered once.
// The budget is compressed through Config: what would be an hour with
// 30 s between tries is seconds with 20 ms.
func TestCloseOutlivesOutage(t *testing.T) {
	const failures = 40
	app := startApp(t, func(r *appReq) answer {
		if r.n < failures {
			return answer{status: 503}
		}
		return answer{status: 200, header: map[string]string{"Content-Type": "application/json"},
			body: `{"publish":[{"channel":"room:1","data":"c_o left"}],"send":["nobody"]}`}
	})
	pub := &recordingPublisher{}
	c := app.client(t, func(cfg *Config) { cfg.Retries = 2; cfg.CloseRetryFor = time.Minute })
	c.SetPublisher(pub)
	var after afterCounter
	s := c.NewStream(newTarget("c_o"), "c_o", "/", nil)
	s.Push(Event{Type: EventOpen})
	s.PushClose(closeEvent(), after.fn("c_o"))
	waitDone(t, s)

	ids := app.eventIDs()
	if ids[0] != "c_o:1" || ids[len(ids)-1] != "c_o:2" {
		t.Fatalf("ids %v", ids)
	}
	// However the open and close were batched, every request after the
	// first close attempt carries the same close id, and the app took it once.
	closeReqs := 0
	for _, r := range app.requests() {
		if slices.Contains(r.ids(), "c_o:2") {
			closeReqs++
		}
	}
	if closeReqs < failures-2 {
		t.Errorf("the close event was sent %d times; the app failed %d", closeReqs, failures)
	}
	// The open is delivered only when it rode with the close: sent alone
	// first (the stream's goroutine may take it before the close is
	// pushed, as on a loaded machine), it runs out of its retries.
	wantDelivered := 1.0
	if first := app.requests()[0].ids(); slices.Contains(first, "c_o:2") {
		wantDelivered = 2
	}
	if got := c.metric(t, "cablecar_webhook_events_total"); got != wantDelivered {
		t.Errorf("events delivered %v, want %v (first request %v)", got, wantDelivered, app.requests()[0].ids())
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 0 {
		t.Errorf("close events dropped %v", got)
	}
	if got := c.metric(t, "cablecar_close_events_pending"); got != 0 {
		t.Errorf("pending gauge %v once delivered", got)
	}
	if got := after.calls(); !reflect.DeepEqual(got, map[string]int{"c_o": 1}) {
		t.Errorf("after called %v", got)
	}
	if got := c.Undelivered(); len(got) != 0 {
		t.Errorf("still owed: %v", got)
	}
	// Of the reply only publish is carried out: the connection is gone.
	if msgs := pub.all(); len(msgs) != 1 || msgs[0].Channel != "room:1" || string(msgs[0].Data) != "c_o left" {
		t.Errorf("published %+v", msgs)
	}
}

// Retry-After is obeyed, but never for longer than CloseBackoffCap: an
// app asking for an hour is tried again within the cap.
func TestCloseRetryAfterCapped(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		if r.n < 3 {
			return answer{status: 503, header: map[string]string{"Retry-After": "3600"}}
		}
		return answer{status: 204}
	})
	c := app.client(t, func(cfg *Config) { cfg.CloseBackoffCap = 50 * time.Millisecond })
	s := c.NewStream(newTarget("c_ra"), "c_ra", "/", nil)
	s.Push(closeEvent())
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, slices.Repeat([]string{"c_ra:1"}, 4)) {
		t.Errorf("ids %v", got)
	}
}

// A waiting close event holds neither its connection nor a goroutine of
// its own: hundreds of them wait under one scheduler goroutine, and
// the connection (the Target) can be collected meanwhile.
func TestWaitingClosesHoldNoConnection(t *testing.T) {
	var up atomic.Bool
	app := startApp(t, func(r *appReq) answer {
		if up.Load() {
			return answer{status: 204}
		}
		return answer{status: 503}
	})
	c := app.client(t, func(cfg *Config) { cfg.CloseRetryFor = time.Minute; cfg.CloseBackoffCap = 200 * time.Millisecond })
	const n = 300
	streams := make([]*Stream, n)
	var targets []weak.Pointer[target]
	for i := range streams {
		id := fmt.Sprintf("c_%04d", i)
		tg := newTarget(id)
		targets = append(targets, weak.Make(tg))
		streams[i] = c.NewStream(tg, id, "/", nil)
		streams[i].Push(closeEvent())
	}
	eventually(t, "every close event parked", func() bool { return c.metric(t, "cablecar_close_events_pending") == n })
	if got := goroutinesWith("callback.(*Stream).run"); got != 0 {
		t.Errorf("%d stream goroutines for waiting close events", got)
	}
	if got := goroutinesWith("callback.(*closeQueue).run"); got != 1 {
		t.Errorf("%d scheduler goroutines", got)
	}
	eventually(t, "the connections collected", func() bool {
		runtime.GC()
		for _, w := range targets {
			if w.Value() != nil {
				return false
			}
		}
		return true
	})

	up.Store(true)
	for _, s := range streams {
		waitDone(t, s)
	}
	if got := c.metric(t, "cablecar_close_events_pending"); got != 0 {
		t.Errorf("pending gauge %v", got)
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 0 {
		t.Errorf("dropped %v", got)
	}
	seen := map[string]bool{}
	for _, id := range app.eventIDs() {
		seen[id] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct close events reached the app, want %d", len(seen), n)
	}
}

func goroutinesWith(frame string) int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			// In the goroutine's own stack, not as its creator.
			if strings.HasPrefix(line, "github.com/cablecar/cablecar/"+frame+"(") {
				n++
				break
			}
		}
	}
	return n
}

// Past max_pending_closes the oldest waiting close events are dropped,
// counted and logged; shutdown then abandons the rest (not dropped:
// Undelivered hands them over) and calls no after for them.
func TestMaxPendingClosesDropsOldest(t *testing.T) {
	app := startApp(t, func(*appReq) answer { return answer{status: 503} })
	c := app.client(t, func(cfg *Config) {
		cfg.MaxPendingCloses = 3
		cfg.CloseRetryFor = time.Hour
		cfg.CloseBackoffCap = time.Hour
	})
	// Nothing is tried twice while the test looks.
	c.backoffBase = time.Hour
	var after afterCounter
	var streams []*Stream
	for i := range 5 {
		id := fmt.Sprint("c_m", i)
		s := c.NewStream(newTarget(id), id, "/", nil)
		// The close event alone: an open pushed before it may go out in
		// a batch of its own first (the stream's goroutine is quick),
		// which would change what the overflow drops.
		s.PushClose(Event{Code: 1001, By: "client"}, after.fn(id))
		streams = append(streams, s)
		// One at a time, so that which is oldest is known.
		eventually(t, "parked", func() bool {
			return c.metric(t, "cablecar_close_events_pending") == float64(min(i+1, 3))
		})
	}
	waitDone(t, streams[0])
	waitDone(t, streams[1])
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "overflow"); got != 2 {
		t.Errorf("dropped (overflow) %v, want 2: the two oldest close events", got)
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 2 {
		t.Errorf("close events dropped %v", got)
	}
	if got := after.calls(); !reflect.DeepEqual(got, map[string]int{"c_m0": 1, "c_m1": 1}) {
		t.Errorf("after called %v: a dropped close event's record goes", got)
	}
	if logs := c.logs.String(); !strings.Contains(logs, "the oldest were dropped") || !strings.Contains(logs, `"max_pending_closes":3`) {
		t.Errorf("overflow not logged:\n%s", logs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Wait(ctx); err == nil {
		t.Fatal("Wait returned nil with close events waiting")
	}
	for _, s := range streams {
		waitDone(t, s)
	}
	want := map[string]registry.CloseEvent{}
	for i := 2; i < 5; i++ {
		want[fmt.Sprint("c_m", i)] = registry.CloseEvent{N: 1, Code: 1001, By: "client"}
	}
	if got := c.Undelivered(); !reflect.DeepEqual(got, want) {
		t.Errorf("undelivered %v, want %v", got, want)
	}
	if got := c.metric(t, "cablecar_close_events_abandoned_total"); got != 3 {
		t.Errorf("abandoned %v", got)
	}
	if got := after.calls(); len(got) != 2 {
		t.Errorf("after called %v: abandoned records must stay", got)
	}
	if got := c.metric(t, "cablecar_close_events_pending"); got != 0 {
		t.Errorf("pending gauge %v after shutdown", got)
	}
	if logs := c.logs.String(); !strings.Contains(logs, `"close_events":3`) {
		t.Errorf("shutdown did not log the number undelivered:\n%s", logs)
	}
}

// A close event handed over by a node that shut down is posted as that
// node numbered it, not as a node_lost close.
func TestPostLostHandedOver(t *testing.T) {
	app := startApp(t, nil)
	c := app.client(t, nil)
	rec := lostRecord()
	rec.Close = &registry.CloseEvent{N: 7, Code: 1012, Reason: "restart", By: "shutdown"}
	waitSettled(t, lost(t, c, rec))
	reqs := app.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	evs := reqs[0].events.Events
	if len(evs) != 1 || evs[0].ID != rec.ID+":7" || evs[0].Type != "close" || *evs[0].Code != 1012 ||
		*evs[0].By != "shutdown" || *evs[0].Reason != "restart" {
		t.Errorf("posted %+v", evs)
	}
}

// The defaults are SPEC §3's: an hour of retries, at most 30 s apart,
// 100000 waiting.
func TestCloseRetryDefaults(t *testing.T) {
	cfg := Config{}.withDefaults()
	if cfg.CloseRetryFor != time.Hour || cfg.CloseBackoffCap != 30*time.Second || cfg.MaxPendingCloses != 100000 {
		t.Errorf("close_retry_for %v, backoff cap %v, max_pending_closes %d", cfg.CloseRetryFor, cfg.CloseBackoffCap, cfg.MaxPendingCloses)
	}
}
