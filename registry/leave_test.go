package registry

import (
	"slices"
	"testing"
	"time"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// A node that shuts down while the app is down leaves the records of the
// connections whose close events it could not deliver, with those events,
// and releases its lease: a survivor reaps it at once and is handed the
// same events, same numbers (SPEC §5). Connections whose close events were
// delivered are not handed over.
func TestRegistryLeaveHandsOverUndelivered(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var p poster
	run(t, a, nil)
	run(t, b, p.as("B"))
	recs := trackN(a, 10)
	eventually(t, "A's records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 10 })
	for _, rec := range recs[:4] {
		a.Untrack(rec.ID) // delivered, the last ones just before Leave
	}
	// Shutdown gave up on 3 numbered close events; 3 more connections
	// were cut before theirs was even numbered.
	handed := map[string]CloseEvent{}
	for i, rec := range recs[4:7] {
		handed[rec.ID] = CloseEvent{N: uint64(5 + i), Code: 1012, Reason: "restart", By: "shutdown"}
	}
	handed[recs[0].ID] = CloseEvent{N: 9, Code: 1012, By: "shutdown"} // delivered meanwhile: ignored
	a.HandOver(handed)
	if err := a.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	k := keysOf("cc:", a.node)
	if rdb.Exists(t.Context(), k.lease).Val() != 0 {
		t.Error("A's lease still held after Leave: survivors would wait lease_ttl")
	}
	if !listed(t, rdb, a.node) {
		t.Error("A no longer listed: no survivor would find its records")
	}

	eventually(t, "B to reap A", 10*time.Second, func() bool { return len(p.postedIDs()) >= 6 })
	eventually(t, "A forgotten", 5*time.Second, func() bool {
		return !listed(t, rdb, a.node)
	})
	if got := p.postedIDs(); !slices.Equal(got, sortedIDs(recs[4:])) {
		t.Errorf("posted %v, want the 6 undelivered", got)
	}
	for _, c := range p.snapshot() {
		rec := c.rec
		want, numbered := handed[rec.ID]
		switch {
		case numbered && (rec.Close == nil || *rec.Close != want):
			t.Errorf("%s handed over with %+v, want %+v", rec.ID, rec.Close, want)
		case !numbered && rec.Close != nil:
			t.Errorf("%s: close %+v, but none was numbered", rec.ID, rec.Close)
		}
		if rec.Path == "" || rec.State == "" {
			t.Errorf("posted record lacks what a close event needs: %+v", rec)
		}
	}
}

func TestRegistryLeaveRemovesEverything(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var p poster
	run(t, a, nil)
	run(t, b, p.as("B"))
	recs := trackN(a, 100)
	eventually(t, "records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 100 })
	for _, rec := range recs {
		a.Untrack(rec.ID) // the close events were delivered
	}
	if err := a.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.runDone:
	default:
		t.Error("Run still running after Leave")
	}
	k := keysOf("cc:", a.node)
	if n := rdb.Exists(t.Context(), k.conns, k.lease, k.reaper).Val(); n != 0 {
		t.Errorf("%d of the node's keys left after Leave", n)
	}
	if rdb.SIsMember(t.Context(), "cc:~nodes", a.node).Val() {
		t.Error("node still in cc:~nodes after Leave")
	}
	a.Track(testRecord(a.node, 1)) // too late: ignored
	waitRounds(t, b, 2)
	if rdb.Exists(t.Context(), k.conns).Val() != 0 || len(p.snapshot()) != 0 {
		t.Error("something of a node that left came back, or was reaped")
	}
}

// Leave without Run having run: still cleans up what a previous Run left.
func TestRegistryLeaveWithoutRun(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	recs := trackN(a, 3)
	if err := a.flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		a.Untrack(rec.ID) // the close events were delivered
	}
	if err := a.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	if hlen(t, rdb, a.node) != 0 {
		t.Error("records left")
	}
	a.Run(t.Context(), nil) // returns at once after Leave
}
