package callback

import (
	"slices"
	"testing"
	"time"
)

// The shutdown event goes in the ordered stream, after what was pushed
// before it, and its channel closes only once the reply to its batch was
// applied: what that reply sends is then on the connection's queue.
func TestPushShutdownAckedAfterApply(t *testing.T) {
	release := make(chan struct{})
	app := startApp(t, func(r *appReq) answer {
		if r.n == 0 {
			return answer{status: 204, wait: release} // the open event is slow
		}
		return answer{status: 200, header: map[string]string{"Content-Type": "application/json"},
			body: `{"send":["goodbye"]}`}
	})
	c := app.client(t, nil)
	tg := newTarget("c_s")
	s := c.NewStream(tg, "c_s", "/", nil)
	s.Push(Event{Type: EventOpen})
	eventually(t, "open in flight", func() bool { return app.count() == 1 })
	done := s.PushShutdown()
	select {
	case <-done:
		t.Fatal("acked while the batch before it was still in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown event never acked")
	}
	replies := tg.applied()
	if len(replies) != 1 || len(replies[0].Send) != 1 || string(replies[0].Send[0].Data) != "goodbye" {
		t.Fatalf("replies applied before the ack: %+v", replies)
	}
	reqs := app.requests()
	if len(reqs) != 2 || len(reqs[1].events.Events) != 1 {
		t.Fatalf("requests %d", len(reqs))
	}
	if ev := reqs[1].events.Events[0]; ev.Type != "shutdown" || ev.ID != "c_s:2" || ev.Data != nil || ev.Code != nil || ev.By != nil {
		t.Errorf("shutdown event %+v", ev)
	}
	// The close event comes after it, numbered on.
	s.PushClose(Event{Code: 1012, Reason: "service restart", By: "shutdown"}, nil)
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, idsOf("c_s", 1, 3)) {
		t.Errorf("ids %v", got)
	}
}

// A stream that can take no more events answers at once: shutdown does
// not wait for a connection that is already closing.
func TestPushShutdownRefused(t *testing.T) {
	app := startApp(t, nil)
	c := app.client(t, nil)
	s := c.NewStream(newTarget("c_r"), "c_r", "/", nil)
	s.PushClose(closeEvent(), nil)
	select {
	case <-s.PushShutdown():
	case <-time.After(time.Second):
		t.Fatal("a closing stream held the shutdown event's ack")
	}
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, idsOf("c_r", 1, 1)) {
		t.Errorf("ids %v: the refused shutdown event was posted", got)
	}
}

// An ack whose event will never be answered (the app refused the
// connection for good, so the event was dropped) is closed once the
// stream ends, never left hanging.
func TestPushShutdownAckedWhenStreamEnds(t *testing.T) {
	release := make(chan struct{})
	app := startApp(t, func(r *appReq) answer { return answer{status: 410, wait: release} })
	c := app.client(t, nil)
	tg := newTarget("c_g")
	s := c.NewStream(tg, "c_g", "/", nil)
	tg.onFail = func(Failure) { s.End(nil) } // a connection without close events
	s.Push(Event{Type: EventOpen})
	eventually(t, "open in flight", func() bool { return app.count() == 1 })
	done := s.PushShutdown()
	close(release)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("never acked")
	}
	waitDone(t, s)
	if got := app.eventIDs(); !slices.Equal(got, idsOf("c_g", 1, 1)) {
		t.Errorf("ids %v: the dropped shutdown event was posted", got)
	}
}
