package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// recorder keeps what Notify heard.
type recorder struct {
	mu  sync.Mutex
	evs []Event
}

func (r *recorder) add(ev Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.evs))
	for i, ev := range r.evs {
		out[i] = ev.Type + " " + ev.Channel + " " + ev.Who
	}
	return out
}

func (r *recorder) want(t *testing.T, want ...string) {
	t.Helper()
	testsupport.Eventually(t, fmt.Sprintf("events %q", want), 5*time.Second, func() bool {
		return fmt.Sprint(r.list()) == fmt.Sprint(want)
	})
}

func startTracker(t *testing.T, store Store, delay time.Duration, counts func(string) int) (*Tracker, *recorder) {
	t.Helper()
	rec := &recorder{}
	tr := NewTracker(Config{LeaveDelay: delay, Notify: rec.add, Counts: counts}, store, zerolog.Nop())
	go tr.Run()
	t.Cleanup(func() { tr.Close(); tr.Wait() })
	return tr, rec
}

func synced(t *testing.T, trs ...*Tracker) {
	t.Helper()
	for _, tr := range trs {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := tr.Synced(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
}

func TestTrackerJoinLeave(t *testing.T) {
	tr, rec := startTracker(t, NewMemory(), time.Hour, nil)
	tr.Join("c1", "room", "u1", json.RawMessage(`{"n":1}`))
	tr.Join("c2", "room", "u1", json.RawMessage(`{"n":2}`))
	rec.want(t, "join room u1")
	synced(t, tr)
	s, _ := tr.Read(context.Background(), "room")
	if len(s.Members) != 1 || s.Members[0].Connections != 2 || string(s.Members[0].Info) != `{"n":2}` {
		t.Fatalf("snapshot %+v", s)
	}
	// An explicit leave of one holder is no leave; of the last, at once
	// (leave_delay is an hour).
	tr.Leave("c1", "room")
	synced(t, tr)
	tr.Leave("c2", "room")
	rec.want(t, "join room u1", "leave room u1")
}

func TestTrackerDropWaitsLeaveDelay(t *testing.T) {
	tr, rec := startTracker(t, NewMemory(), 300*time.Millisecond, nil)
	tr.Join("c1", "room", "u1", nil)
	rec.want(t, "join room u1")
	// A reconnect within the delay: never a leave.
	tr.Drop("c1")
	tr.Join("c2", "room", "u1", nil)
	synced(t, tr)
	time.Sleep(500 * time.Millisecond) // past the delay, to see that nothing comes
	if got := rec.list(); len(got) != 1 {
		t.Fatalf("a reconnect within leave_delay made events %q", got)
	}
	start := time.Now()
	tr.Drop("c2")
	rec.want(t, "join room u1", "leave room u1")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("left after %v, before leave_delay", d)
	}
}

func TestTrackerRejoinOtherID(t *testing.T) {
	tr, rec := startTracker(t, NewMemory(), time.Hour, nil)
	tr.Join("c1", "room", "u1", nil)
	synced(t, tr)
	tr.Join("c1", "room", "u2", nil)
	rec.want(t, "join room u1", "leave room u1", "join room u2")
	if got := tr.Of("c1"); got["room"] != "u2" || len(got) != 1 {
		t.Fatalf("Of = %v", got)
	}
	if got := tr.Holdings("c1"); got["room"].ID != "u2" || string(got["room"].Info) != "null" {
		t.Fatalf("Holdings = %v", got)
	}
}

func TestTrackerCounts(t *testing.T) {
	var mu sync.Mutex
	n := map[string]int{}
	tr, _ := startTracker(t, NewMemory(), time.Hour, func(ch string) int {
		mu.Lock()
		defer mu.Unlock()
		return n[ch]
	})
	mu.Lock()
	n["room"] = 3
	mu.Unlock()
	tr.Counted("room")
	synced(t, tr)
	s, _ := tr.Read(context.Background(), "room")
	if s.Connections != 3 || len(s.Members) != 0 {
		t.Fatalf("snapshot %+v", s)
	}
}
