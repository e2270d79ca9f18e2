package callback

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/registry"
)

func TestStreamDeliversEvents(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		return answer{status: 200, header: map[string]string{"Content-Type": "application/json"},
			body: `{"send":["hi"],"state":"s1","subscribe":["room:1"]}`}
	})
	c := app.client(t, nil)
	tg := newTarget("c_1")
	tg.info.Channels = []string{"lobby"}
	tg.info.Claims = []byte(`{"sub":"u"}`)
	s := c.NewStream(tg, "c_1", "/chat?room=1", [][2]string{
		{"Host", "example.com"}, {"Cookie", "a=b"}, {"X-Forwarded-Proto", "https"},
		// Framing headers are Cablecar's: these must not reach the app.
		{"Content-Length", "5"}, {"Transfer-Encoding", "chunked"}, {"Content-Type", "text/plain"},
	})
	s.Push(Event{Type: EventOpen})
	eventually(t, "open delivered", func() bool { return app.count() == 1 })
	s.Push(closeEvent())
	waitDone(t, s)

	reqs := app.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	r := reqs[0]
	if r.method != "POST" || r.uri != "/chat?room=1" || r.host != "example.com" {
		t.Errorf("request %s %s host %s", r.method, r.uri, r.host)
	}
	for k, want := range map[string]string{
		"Content-Type": "application/json", "Cablecar-Connection-Id": "c_1", "Cookie": "a=b",
		"X-Forwarded-Proto": "https", "Transfer-Encoding": "", "Cablecar-Signature": "",
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	b := r.events
	if b.Connection.ID != "c_1" || b.Connection.State == nil || *b.Connection.State != "" ||
		!slices.Equal(b.Connection.Channels, []string{"lobby"}) || string(b.Connection.Claims) != `{"sub":"u"}` {
		t.Errorf("connection %+v", b.Connection)
	}
	// The second request sees the state the first reply set.
	if st := reqs[1].events.Connection.State; st == nil || *st != "s1" {
		t.Errorf("state after the reply: %v", st)
	}
	if got := app.eventIDs(); !slices.Equal(got, []string{"c_1:1", "c_1:2"}) {
		t.Errorf("ids %v", got)
	}
	ev := reqs[1].events.Events[0]
	if ev.Type != "close" || ev.Code == nil || *ev.Code != 1000 || ev.Reason == nil || ev.By == nil || *ev.By != "client" || ev.Data != nil {
		t.Errorf("close event %+v", ev)
	}
	replies := tg.applied()
	if len(replies) != 2 || string(replies[0].Send[0].Data) != "hi" || replies[0].Subscribe[0] != "room:1" {
		t.Errorf("replies %+v", replies)
	}
	if got := c.metric(t, "cablecar_webhook_events_total"); got != 2 {
		t.Errorf("events delivered %v", got)
	}
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "events", "outcome", "ok"); got != 2 {
		t.Errorf("ok webhooks %v", got)
	}
	// Pushes after the close event are dropped.
	s.Push(msg("late"))
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "closed"); got != 1 {
		t.Errorf("dropped after close %v", got)
	}
}

func TestStreamSigned(t *testing.T) {
	secrets := []string{"new-secret", "old-secret"}
	var mu sync.Mutex
	var verr []error
	app := startApp(t, func(r *appReq) answer {
		payload := r.body
		if r.method == "GET" {
			payload = []byte("GET " + r.uri)
		}
		// Each secret alone verifies: the app may hold either during a
		// rotation.
		for _, sec := range secrets {
			err := auth.NewSigner([]string{sec}).Verify(r.header.Get("Cablecar-Signature"), payload, time.Now(), time.Minute)
			mu.Lock()
			verr = append(verr, err)
			mu.Unlock()
		}
		return answer{status: 204}
	})
	c := app.client(t, func(cfg *Config) { cfg.Secrets = secrets })
	s := c.NewStream(newTarget("c_s"), "c_s", "/ws", [][2]string{{"Host", "app"}, {"Cablecar-Signature", "forged"}})
	s.Push(Event{Type: EventOpen})
	s.Push(msg("hello"))
	s.Push(closeEvent())
	waitDone(t, s)

	mu.Lock()
	defer mu.Unlock()
	if len(verr) == 0 {
		t.Fatal("no request")
	}
	for i, err := range verr {
		if err != nil {
			t.Errorf("check %d: %v", i, err)
		}
	}
	for _, r := range app.requests() {
		if sig := r.header.Get("Cablecar-Signature"); strings.Count(sig, "v1=") != 2 {
			t.Errorf("signature %q: want one v1 per secret", sig)
		}
	}
}

// While a request is in flight the events pushed meanwhile queue up, and
// go together, in order, in the next request.
func TestStreamBatches(t *testing.T) {
	release := make(chan struct{})
	app := startApp(t, func(r *appReq) answer {
		if r.n == 0 {
			return answer{status: 204, wait: release}
		}
		return answer{status: 204}
	})
	c := app.client(t, nil)
	s := c.NewStream(newTarget("c_b"), "c_b", "/", nil)
	s.Push(Event{Type: EventOpen})
	eventually(t, "first request at the app", func() bool { return app.count() == 1 })
	for i := 2; i <= 10; i++ {
		s.Push(msg(fmt.Sprint("m", i)))
	}
	close(release)
	eventually(t, "all events at the app", func() bool { return len(app.eventIDs()) == 10 })
	s.Push(closeEvent())
	waitDone(t, s)

	reqs := app.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want open, a batch of 9, close", len(reqs))
	}
	if got := reqs[1].ids(); !slices.Equal(got, idsOf("c_b", 2, 10)) {
		t.Errorf("batch ids %v", got)
	}
	for i, ev := range reqs[1].events.Events {
		if ev.Data == nil || *ev.Data != fmt.Sprint("m", i+2) {
			t.Errorf("event %d data %v", i, ev.Data)
		}
	}
	if _, perConn := app.maxes(); perConn != 1 {
		t.Errorf("%d requests of one connection in flight at once", perConn)
	}
}

// Push blocks once 64 events wait behind the request in flight, and goes
// on once they are taken; a single large event is always taken into an
// empty queue.
func TestStreamPushBlocks(t *testing.T) {
	var mu sync.Mutex
	gates := map[int]chan struct{}{0: make(chan struct{}), 1: make(chan struct{})}
	app := startApp(t, func(r *appReq) answer {
		mu.Lock()
		defer mu.Unlock()
		return answer{status: 204, wait: gates[r.n]}
	})
	c := app.client(t, nil)
	s := c.NewStream(newTarget("c_q"), "c_q", "/", nil)
	s.Push(Event{Type: EventOpen})
	eventually(t, "open at the app", func() bool { return app.count() == 1 })

	for i := range maxQueueEvents {
		s.Push(msg(fmt.Sprint(i)))
	}
	pushed := make(chan struct{})
	go func() { s.Push(msg("one too many")); close(pushed) }()
	eventually(t, "Push waiting", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.space != nil
	})
	select {
	case <-pushed:
		t.Fatal("Push returned with the queue full")
	case <-time.After(20 * time.Millisecond):
	}

	close(gates[0]) // the open is answered; the 64 go in the next request
	select {
	case <-pushed:
	case <-time.After(5 * time.Second):
		t.Fatal("Push still blocked once the queue was taken")
	}
	eventually(t, "the batch at the app", func() bool { return app.count() == 2 })
	if n := len(app.requests()[1].events.Events); n != maxQueueEvents {
		t.Errorf("second request holds %d events", n)
	}

	// With a request in flight and one event of 2 MiB queued, the next
	// Push waits: bytes count too.
	big := bytes.Repeat([]byte("x"), 2<<20)
	s.Push(Event{Type: EventMessage, Data: big})
	pushed = make(chan struct{})
	go func() { s.Push(msg("after big")); close(pushed) }()
	eventually(t, "Push waiting on bytes", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.space != nil
	})
	mu.Lock()
	close(gates[1])
	mu.Unlock()
	<-pushed
	s.Push(closeEvent())
	waitDone(t, s)
	ids := app.eventIDs()
	if want := idsOf("c_q", 1, maxQueueEvents+5); !slices.Equal(ids, want) {
		t.Errorf("ids %v\nwant %v", ids, want)
	}
}

// MaxInFlight caps the requests at the app over all connections.
func TestGlobalCap(t *testing.T) {
	app := startApp(t, func(r *appReq) answer { return answer{status: 204, delay: 15 * time.Millisecond} })
	c := app.client(t, func(cfg *Config) { cfg.MaxInFlight = 2 })
	var streams []*Stream
	var maxSeen int
	var mu sync.Mutex
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			maxSeen = max(maxSeen, c.inFlightGauge())
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()
	for i := range 5 {
		id := fmt.Sprint("c_", i)
		s := c.NewStream(newTarget(id), id, "/", nil)
		streams = append(streams, s)
		s.Push(Event{Type: EventOpen})
	}
	for _, s := range streams {
		for j := range 3 {
			s.Push(msg(fmt.Sprint(j)))
		}
		s.Push(closeEvent())
	}
	for _, s := range streams {
		waitDone(t, s)
	}
	close(stop)
	<-sampled
	all, perConn := app.maxes()
	if all > 2 {
		t.Errorf("%d requests in flight at the app, cap 2", all)
	}
	if all < 2 {
		t.Errorf("only %d request in flight at once: the cap should be used", all)
	}
	if perConn != 1 {
		t.Errorf("%d requests of one connection at once", perConn)
	}
	if maxSeen > 2 {
		t.Errorf("cablecar_webhooks_in_flight reported %d", maxSeen)
	}
	if got := len(app.eventIDs()); got != 25 {
		t.Errorf("%d events delivered", got)
	}
	if got := c.metric(t, "cablecar_webhooks_in_flight"); got != 0 {
		t.Errorf("in-flight gauge %v after all done", got)
	}
}

func TestRetryAfter(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		if r.n == 0 {
			return answer{status: 503, header: map[string]string{"Retry-After": "1"}}
		}
		return answer{status: 204}
	})
	c := app.client(t, nil)
	s := c.NewStream(newTarget("c_r"), "c_r", "/", nil)
	s.Push(Event{Type: EventOpen})
	s.End(nil)
	waitDone(t, s)
	reqs := app.requests()
	if len(reqs) < 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	if gap := reqs[1].at.Sub(reqs[0].at); gap < 900*time.Millisecond {
		t.Errorf("retried after %v despite Retry-After: 1", gap)
	}
	if !slices.Equal(reqs[0].ids(), reqs[1].ids()) || !slices.Equal(reqs[0].ids(), []string{"c_r:1"}) {
		t.Errorf("ids changed across the retry: %v then %v", reqs[0].ids(), reqs[1].ids())
	}
	if !bytes.Equal(reqs[0].body, reqs[1].body) {
		t.Errorf("body changed across the retry")
	}
	if got := c.metric(t, "cablecar_webhook_retries_total"); got != 1 {
		t.Errorf("retries %v", got)
	}
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "events", "outcome", "failed"); got != 1 {
		t.Errorf("failed attempts %v", got)
	}
}

// 5xx, 429 and a broken connection are all retried, with the same ids.
func TestRetryThenSuccess(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		switch r.n {
		case 0:
			return answer{status: 500}
		case 1:
			return answer{status: 429}
		case 2:
			return answer{status: 502}
		}
		return answer{status: 204}
	})
	c := app.client(t, nil)
	tg := newTarget("c_t")
	s := c.NewStream(tg, "c_t", "/", nil)
	s.Push(Event{Type: EventOpen})
	eventually(t, "delivered", func() bool { return c.metric(t, "cablecar_webhook_events_total") == 1 })
	s.End(nil)
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, []string{"c_t:1", "c_t:1", "c_t:1", "c_t:1"}) {
		t.Errorf("ids %v", got)
	}
	if tg.failCount() != 0 {
		t.Error("Fail called though the last retry succeeded")
	}
}

// When retries of an open/message batch run out the connection is failed
// (1011 by upstream); what queued behind is dropped, but the close event
// the connection pushes in answer is still delivered.
func TestRetriesExhausted(t *testing.T) {
	var mu sync.Mutex
	down := true
	app := startApp(t, func(r *appReq) answer {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return answer{status: 500}
		}
		return answer{status: 204}
	})
	c := app.client(t, func(cfg *Config) { cfg.Retries = 2 })
	tg := newTarget("c_x")
	s := c.NewStream(tg, "c_x", "/", nil)
	tg.onFail = func(Failure) {
		mu.Lock()
		down = false
		mu.Unlock()
		s.Push(msg("dropped: the connection failed"))
		s.Push(Event{Type: EventClose, Code: 1011, Reason: "app unavailable", By: "upstream"})
	}
	s.Push(Event{Type: EventOpen})
	eventually(t, "first attempt", func() bool { return app.count() >= 1 })
	s.Push(msg("queued behind"))
	select {
	case why := <-tg.failed:
		if why != AppUnavailable {
			t.Errorf("Fail(%d) for exhausted retries, want AppUnavailable", why)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Fail not called")
	}
	waitDone(t, s)
	reqs := app.requests()
	if len(reqs) != 4 {
		t.Fatalf("%d requests, want 3 attempts of the open and the close", len(reqs))
	}
	for _, r := range reqs[:3] {
		if !slices.Equal(r.ids(), []string{"c_x:1"}) {
			t.Errorf("attempt ids %v", r.ids())
		}
	}
	if last := reqs[3].events.Events; len(last) != 1 || last[0].Type != "close" || last[0].ID != "c_x:3" || *last[0].By != "upstream" {
		t.Errorf("last request %+v", last)
	}
	if tg.failCount() != 1 {
		t.Errorf("Fail called %d times", tg.failCount())
	}
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "upstream"); got != 3 {
		t.Errorf("dropped (upstream) %v, want the open, the queued and the late message", got)
	}
	if got := c.metric(t, "cablecar_webhook_retries_total"); got != 2 {
		t.Errorf("retries %v", got)
	}
}

// 410 closes the connection (by app); what queued is dropped, a Push
// waiting for room returns, and the close event is still delivered.
func TestGone(t *testing.T) {
	release := make(chan struct{})
	app := startApp(t, func(r *appReq) answer {
		if r.n == 0 {
			return answer{status: 410, wait: release}
		}
		return answer{status: 204}
	})
	c := app.client(t, nil)
	tg := newTarget("c_g")
	s := c.NewStream(tg, "c_g", "/", nil)
	s.Push(Event{Type: EventOpen})
	eventually(t, "open at the app", func() bool { return app.count() == 1 })
	for i := range maxQueueEvents {
		s.Push(msg(fmt.Sprint(i)))
	}
	pushed := make(chan struct{})
	go func() { s.Push(msg("waiting")); close(pushed) }()
	eventually(t, "Push waiting", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.space != nil
	})
	close(release)
	select {
	case why := <-tg.failed:
		if why != AppClosed {
			t.Errorf("Fail(%d) for 410, want AppClosed", why)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Fail not called")
	}
	select {
	case <-pushed:
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting Push did not return after 410")
	}
	s.Push(Event{Type: EventClose, Code: 1000, By: "app"})
	waitDone(t, s)
	reqs := app.requests()
	if len(reqs) != 2 || len(reqs[1].events.Events) != 1 || reqs[1].events.Events[0].Type != "close" {
		t.Fatalf("requests after 410: %d, last %+v", len(reqs), reqs[len(reqs)-1].events.Events)
	}
	// The open, the 64 queued and the one whose Push was waiting.
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "gone"); got != 2+maxQueueEvents {
		t.Errorf("dropped (gone) %v", got)
	}
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "events", "outcome", "gone"); got != 1 {
		t.Errorf("gone webhooks %v", got)
	}
}

// Other 4xx drop the batch; the stream goes on with the next.
func TestRejectedDropped(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		if r.n == 1 {
			return answer{status: 422}
		}
		return answer{status: 204}
	})
	c := app.client(t, nil)
	tg := newTarget("c_4")
	s := c.NewStream(tg, "c_4", "/", nil)
	s.Push(Event{Type: EventOpen})
	eventually(t, "open", func() bool { return app.count() == 1 })
	s.Push(msg("bad"))
	eventually(t, "bad", func() bool { return app.count() == 2 })
	s.Push(msg("good"))
	s.Push(closeEvent())
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, idsOf("c_4", 1, 4)) {
		t.Errorf("ids %v", got)
	}
	if tg.failCount() != 0 {
		t.Error("Fail called for a 4xx")
	}
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "rejected"); got != 1 {
		t.Errorf("dropped (rejected) %v", got)
	}
	if logs := c.logs.String(); !strings.Contains(logs, `"status":422`) || !strings.Contains(logs, `"event_ids":"c_4:2"`) {
		t.Errorf("no warning with status and ids:\n%s", logs)
	}
}

// An invalid reply is logged (never its body) and the stream goes on.
func TestInvalidReply(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		if r.n == 0 {
			return answer{status: 200, header: map[string]string{"Content-Type": "application/json"},
				body: `{"send":["secret-body-text"],"close":{"code":1011}}`}
		}
		return answer{status: 200, header: map[string]string{"Content-Type": "text/plain"}, body: strings.Repeat("x", 2000)}
	})
	c := app.client(t, func(cfg *Config) { cfg.MaxReplySize = 1000 })
	tg := newTarget("c_i")
	s := c.NewStream(tg, "c_i", "/", nil)
	s.Push(Event{Type: EventOpen})
	eventually(t, "open", func() bool { return app.count() == 1 })
	s.Push(closeEvent())
	waitDone(t, s)
	if len(tg.applied()) != 0 {
		t.Errorf("invalid replies applied: %+v", tg.applied())
	}
	if app.count() != 2 {
		t.Errorf("%d requests: an invalid reply must not be retried", app.count())
	}
	logs := c.logs.String()
	if strings.Contains(logs, "secret-body-text") {
		t.Errorf("the reply body was logged:\n%s", logs)
	}
	if !strings.Contains(logs, "close.code") || !strings.Contains(logs, "larger than 1000") {
		t.Errorf("the reasons were not logged:\n%s", logs)
	}
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "events", "outcome", "invalid"); got != 2 {
		t.Errorf("invalid webhooks %v", got)
	}
	if got := c.metric(t, "cablecar_webhook_events_total"); got != 2 {
		t.Errorf("events delivered %v: the app did take them", got)
	}
}

// A close event is retried past Retries, until it is delivered.
func TestCloseRetriedLonger(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		if r.n < 5 {
			return answer{status: 503}
		}
		return answer{status: 204}
	})
	c := app.client(t, func(cfg *Config) { cfg.Retries = 1 })
	tg := newTarget("c_c")
	s := c.NewStream(tg, "c_c", "/", nil)
	s.Push(closeEvent())
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, slices.Repeat([]string{"c_c:1"}, 6)) {
		t.Errorf("ids %v", got)
	}
	if tg.failCount() != 0 {
		t.Error("Fail called for a close event")
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 0 {
		t.Errorf("close events dropped %v", got)
	}
}

// Past CloseRetryFor a close event is dropped, counted and logged.
func TestCloseRetryGivesUp(t *testing.T) {
	app := startApp(t, func(r *appReq) answer { return answer{status: 500} })
	c := app.client(t, func(cfg *Config) { cfg.CloseRetryFor = 100 * time.Millisecond })
	s := c.NewStream(newTarget("c_d"), "c_d", "/", nil)
	s.Push(closeEvent())
	waitDone(t, s)
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 1 {
		t.Errorf("close events dropped %v", got)
	}
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "retry_limit"); got != 1 {
		t.Errorf("dropped (retry_limit) %v", got)
	}
	if logs := c.logs.String(); !strings.Contains(logs, `"level":"error"`) || !strings.Contains(logs, "close event not delivered") {
		t.Errorf("no error logged:\n%s", logs)
	}
}

func TestWaitAllDone(t *testing.T) {
	app := startApp(t, func(r *appReq) answer { return answer{status: 204, delay: 10 * time.Millisecond} })
	c := app.client(t, nil)
	var streams []*Stream
	for i := range 3 {
		id := fmt.Sprint("w", i)
		s := c.NewStream(newTarget(id), id, "/", nil)
		s.Push(Event{Type: EventOpen})
		streams = append(streams, s)
	}
	waited := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		waited <- c.Wait(ctx)
	}()
	for i, s := range streams {
		if i == 0 {
			s.End(nil)
		} else {
			s.Push(closeEvent())
		}
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return")
	}
	for _, s := range streams {
		select {
		case <-s.Done():
		default:
			t.Error("Wait returned before a stream was done")
		}
	}
	if got := len(app.eventIDs()); got != 5 {
		t.Errorf("%d events delivered", got)
	}
	// A client without streams does not wait.
	if err := c.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// When the app is down and Wait's ctx ends, what is left is dropped and
// counted, and Wait says so.
func TestWaitGivesUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every dial is refused

	c := newTestClient(t, "tcp", addr, func(cfg *Config) { cfg.Retries = 1000 })
	tg := newTarget("c_w")
	s := c.NewStream(tg, "c_w", "/", nil)
	s.Push(Event{Type: EventOpen})
	s.Push(msg("m"))
	s.Push(closeEvent())
	eventually(t, "retrying", func() bool { return c.metric(t, "cablecar_webhook_retries_total") >= 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v", err)
	}
	waitDone(t, s)
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "shutdown"); got != 3 {
		t.Errorf("dropped (shutdown) %v", got)
	}
	// Abandoned, not dropped: with Redis another node posts it.
	if got := c.metric(t, "cablecar_close_events_abandoned_total"); got != 1 {
		t.Errorf("close events abandoned %v", got)
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 0 {
		t.Errorf("close events dropped %v", got)
	}
	if got := c.Undelivered(); !reflect.DeepEqual(got, map[string]registry.CloseEvent{"c_w": {N: 3, Code: 1000, By: "client"}}) {
		t.Errorf("undelivered %v", got)
	}
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "events", "outcome", "unreachable"); got < 2 {
		t.Errorf("unreachable attempts %v", got)
	}
	if tg.failCount() != 0 {
		t.Error("Fail called")
	}
	// Once shutdown gave up, a new stream's events are dropped too and
	// it is done at once.
	s2 := c.NewStream(newTarget("c_w2"), "c_w2", "/", nil)
	s2.Push(msg("x"))
	waitDone(t, s2)
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "shutdown"); got != 4 {
		t.Errorf("dropped (shutdown) %v", got)
	}
}

// End(final) queues its event last and ends the stream.
func TestEndWithFinal(t *testing.T) {
	app := startApp(t, nil)
	c := app.client(t, nil)
	s := c.NewStream(newTarget("c_e"), "c_e", "/", nil)
	s.Push(Event{Type: EventOpen})
	final := closeEvent()
	s.End(&final)
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, idsOf("c_e", 1, 2)) {
		t.Errorf("ids %v", got)
	}
	s.End(nil) // twice is harmless
	s.Push(msg("late"))
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "closed"); got != 1 {
		t.Errorf("dropped (closed) %v", got)
	}

	// A stream ended while idle is done at once.
	s2 := c.NewStream(newTarget("c_e2"), "c_e2", "/", nil)
	s2.End(nil)
	waitDone(t, s2)
}

func TestUnixSocket(t *testing.T) {
	app := startUnixApp(t, func(r *appReq) answer {
		if r.method == "GET" {
			return answer{status: 200, header: map[string]string{"Cablecar-Accept": "websocket"}, body: "welcome"}
		}
		return answer{status: 200, header: map[string]string{"Content-Type": "text/plain"}, body: "echo"}
	})
	if app.network != "unix" {
		t.Fatalf("network %s", app.network)
	}
	c := app.client(t, nil)

	req, resp := acceptRequest("/ws?x=1", "")
	if err := c.Accept(req, resp); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode() != 200 || string(resp.Header.Peek("Cablecar-Accept")) != "websocket" || string(resp.Body()) != "welcome" {
		t.Errorf("accept answer %d %q", resp.StatusCode(), resp.Body())
	}

	tg := newTarget("c_u")
	s := c.NewStream(tg, "c_u", "/ws?x=1", nil)
	s.Push(msg("hi"))
	s.Push(closeEvent())
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, idsOf("c_u", 1, 2)) {
		t.Errorf("ids %v", got)
	}
	reqs := app.requests()
	if reqs[1].host != "localhost" {
		t.Errorf("host %q", reqs[1].host)
	}
	if r := tg.applied(); len(r) == 0 || !reflect.DeepEqual(r[0].Send, []Frame{{Data: []byte("echo")}}) {
		t.Errorf("replies %+v", r)
	}
}

func TestBackoff(t *testing.T) {
	base, limit := 100*time.Millisecond, 5*time.Second
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 7: 5 * time.Second, 60: 5 * time.Second} {
		for range 20 {
			if d := backoff(n, base, limit); d < want/2 || d > want {
				t.Errorf("backoff(%d) = %v, want in [%v, %v]", n, d, want/2, want)
			}
		}
	}
}

func TestRetryAfterHeader(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	limit := 30 * time.Second
	for _, tt := range []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{" 7 ", 7 * time.Second, true},
		{"120", 30 * time.Second, true},
		{"99999999999999999999", 0, false},
		{"-1", 0, false},
		{"soon", 0, false},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second, true},
		{"Thu, 02 Jan 2025 03:04:15 GMT", 10 * time.Second, true},
		{"Thu, 02 Jan 2025 05:00:00 GMT", 30 * time.Second, true},
		{"Thu, 02 Jan 2025 03:00:00 GMT", 0, true},
	} {
		d, ok := retryAfter([]byte(tt.v), now, limit)
		if d != tt.want || ok != tt.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tt.v, d, ok, tt.want, tt.ok)
		}
	}
}
