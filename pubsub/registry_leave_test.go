package pubsub

import (
	"encoding/json"
	"slices"
	"testing"
	"time"
)

// A node that shuts down while the app is down leaves the records of the
// connections whose close events it could not deliver, with those events,
// and releases its lease: a survivor reaps it at once and is handed the
// same events, same numbers (SPEC §5). Connections whose close events were
// delivered are not handed over.
func TestRegistryLeaveHandsOverUndelivered(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var rp reaper
	run(t, a, nil)
	run(t, b, rp.reapAs("B"))
	recs := trackN(a, 10)
	regEventually(t, "A's records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 10 })
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
	if !rdb.SIsMember(t.Context(), "cc:~nodes", a.node).Val() {
		t.Error("A no longer listed: no survivor would find its records")
	}

	regEventually(t, "B to reap A", 10*time.Second, func() bool { return len(rp.reapedIDs()) >= 6 })
	regEventually(t, "A forgotten", 5*time.Second, func() bool {
		return !rdb.SIsMember(t.Context(), "cc:~nodes", a.node).Val()
	})
	if got := rp.reapedIDs(); !slices.Equal(got, sortedIDs(recs[4:])) {
		t.Errorf("reaped %v, want the 6 undelivered", got)
	}
	for _, c := range rp.snapshot() {
		for _, rec := range c.recs {
			want, numbered := handed[rec.ID]
			switch {
			case numbered && (rec.Close == nil || *rec.Close != want):
				t.Errorf("%s handed over with %+v, want %+v", rec.ID, rec.Close, want)
			case !numbered && rec.Close != nil:
				t.Errorf("%s: close %+v, but none was numbered", rec.ID, rec.Close)
			}
			if rec.Path == "" || rec.State == "" {
				t.Errorf("reaped record lacks what a close event needs: %+v", rec)
			}
		}
	}
}

// A handed-over close event survives the hand-written JSON of a record.
func TestRecordJSONWithClose(t *testing.T) {
	for _, c := range []CloseEvent{
		{N: 9007199254740991, Code: 1012, By: "shutdown"},
		{N: 3, Code: 4000, Reason: "bye \"now\"\u2028", By: "app"},
	} {
		rec := ConnRecord{ID: "c_1", Path: "/", State: "s", Close: &c}
		o := op{head: encodeHead(rec), state: rec.State, close: rec.Close}
		b := appendRecord(nil, &o)
		var got ConnRecord
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%v\n%s", err, b)
		}
		if got.Close == nil || *got.Close != c || got.State != "s" {
			t.Errorf("round trip of %+v: %+v\n%s", c, got.Close, b)
		}
	}
}
