package callback

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/pubsub"
)

func lostRecord() pubsub.ConnRecord {
	return pubsub.ConnRecord{
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

func TestDeliverClose(t *testing.T) {
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
	if err := c.DeliverClose(t.Context(), rec, lostClose, nil); err != nil {
		t.Fatal(err)
	}
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

func TestDeliverCloseRetries(t *testing.T) {
	var n atomic.Int32
	app := startApp(t, func(*appReq) answer {
		if n.Add(1) <= 2 {
			return answer{status: 500}
		}
		return answer{status: 204}
	})
	c := app.client(t, nil)
	rec := lostRecord()
	if err := c.DeliverClose(t.Context(), rec, lostClose, nil); err != nil {
		t.Fatal(err)
	}
	want := []string{rec.ID + ":9007199254740991", rec.ID + ":9007199254740991", rec.ID + ":9007199254740991"}
	if got := app.eventIDs(); !slices.Equal(got, want) {
		t.Errorf("ids %v, want the same id three times", got)
	}
	if got := c.metric(t, "cablecar_webhook_retries_total"); got != 2 {
		t.Errorf("retries %v", got)
	}
}

func TestDeliverCloseGone(t *testing.T) {
	app := startApp(t, func(*appReq) answer { return answer{status: 410} })
	c := app.client(t, nil)
	if err := c.DeliverClose(t.Context(), lostRecord(), lostClose, nil); err != nil {
		t.Errorf("410 to a close event: %v, want nil (the app knows)", err)
	}
}

func TestDeliverCloseRejected(t *testing.T) {
	app := startApp(t, func(*appReq) answer { return answer{status: 422} })
	c := app.client(t, nil)
	err := c.DeliverClose(t.Context(), lostRecord(), lostClose, nil)
	if !errors.Is(err, ErrCloseRejected) {
		t.Errorf("err %v, want ErrCloseRejected", err)
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 1 {
		t.Errorf("close events dropped %v, want 1", got)
	}
	if got := c.metric(t, "cablecar_events_dropped_total", "reason", "rejected"); got != 1 {
		t.Errorf("events dropped (rejected) %v, want 1", got)
	}
}

func TestDeliverCloseRetriesRunOut(t *testing.T) {
	app := startApp(t, func(*appReq) answer { return answer{status: 503} })
	c := app.client(t, func(cfg *Config) { cfg.CloseRetryFor = 150 * time.Millisecond })
	err := c.DeliverClose(t.Context(), lostRecord(), lostClose, nil)
	if !errors.Is(err, ErrCloseDropped) {
		t.Errorf("err %v, want ErrCloseDropped", err)
	}
	if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 1 {
		t.Errorf("close events dropped %v, want 1", got)
	}
	if app.count() < 2 {
		t.Errorf("%d attempts", app.count())
	}
}

// The caller's ctx ends first: DeliverClose returns at once, the stream
// stops, and nothing is counted as dropped (the record is still the
// caller's to post again).
func TestDeliverCloseCtxEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		ans  answer
	}{
		{"failing app", answer{status: 500}},
		{"hanging app", answer{status: 204, delay: 300 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := startApp(t, func(*appReq) answer { return tc.ans })
			c := app.client(t, nil)
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := c.DeliverClose(ctx, lostRecord(), lostClose, nil)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err %v, want the ctx's", err)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("returned %v after ctx ended", took)
			}
			if w := waitNoGoroutine("callback.(*Stream).run", 5*time.Second); w != "" {
				t.Errorf("the stream still runs:\n%s", w)
			}
			if got := c.metric(t, "cablecar_close_events_dropped_total"); got != 0 {
				t.Errorf("close events dropped %v, want 0: abandoned, not dropped", got)
			}
		})
	}
}

// Shutdown gave up (Wait's ctx ended): DeliverClose stops too.
func TestDeliverCloseShutdown(t *testing.T) {
	release := make(chan struct{})
	app := startApp(t, func(*appReq) answer { return answer{status: 500, wait: release} })
	defer close(release)
	c := app.client(t, nil)
	// A live connection of this node keeps Wait waiting.
	s := c.NewStream(newTarget("c_live"), "c_live", "/", nil)
	s.Push(closeEvent())
	errc := make(chan error, 1)
	go func() { errc <- c.DeliverClose(context.Background(), lostRecord(), lostClose, nil) }()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_ = c.Wait(ctx)
	select {
	case err := <-errc:
		if !errors.Is(err, ErrShutdown) {
			t.Errorf("err %v, want ErrShutdown", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("DeliverClose still running after shutdown gave up")
	}
}

func TestDeliverCloseRefusesOtherEvents(t *testing.T) {
	c := newTestClient(t, "tcp", "127.0.0.1:1", nil)
	if err := c.DeliverClose(t.Context(), lostRecord(), Event{Type: EventMessage}, nil); err == nil {
		t.Error("a message event was accepted")
	}
	if err := c.DeliverClose(t.Context(), pubsub.ConnRecord{ID: "c_1"}, lostClose, nil); err == nil {
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
func TestDeliverClosePublishes(t *testing.T) {
	app := startApp(t, func(*appReq) answer {
		return answer{status: 200, header: map[string]string{"Content-Type": "application/json"},
			body: `{"send":["nobody"],"publish":[{"channel":"room:1","data":"u7 left","except_self":true},{"channel":"room:1","data":"AAE=","binary":true}],"close":{"code":4000}}`}
	})
	c := app.client(t, nil)
	pub := &recordingPublisher{}
	if err := c.DeliverClose(t.Context(), lostRecord(), lostClose, pub); err != nil {
		t.Fatal(err)
	}
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
