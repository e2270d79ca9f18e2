package registry

import (
	"slices"
	"testing"
	"time"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// Another node finds a connection by its id while its node's lease lives,
// with the channels of the latest update; not once it is untracked, nor
// once the node is gone.
func TestRegistryLookup(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	killA := run(t, a, nil)
	run(t, b, nil)
	recs := trackN(a, 2)
	a.Update(recs[0].ID, "st", []string{"room:1", "room:2"})
	ctx := t.Context()
	eventually(t, "A's records", 5*time.Second, func() bool {
		rec, ok, err := b.Lookup(ctx, recs[0].ID)
		return err == nil && ok && slices.Equal(rec.Channels, []string{"room:1", "room:2"})
	})
	if rec, ok, err := b.Lookup(ctx, recs[0].ID); err != nil || !ok || rec.ID != recs[0].ID {
		t.Fatalf("Lookup(%s) = %+v %v %v", recs[0].ID, rec, ok, err)
	}
	for _, id := range []string{"c_nodeAAAA" + "xxxxxxxxxxxxxxxx", "not-an-id", ""} {
		if _, ok, err := b.Lookup(ctx, id); ok || err != nil {
			t.Errorf("Lookup(%q) = %v %v, want not found", id, ok, err)
		}
	}
	// Ended (its close event still on its way): the record stays, the
	// connection is no longer found open.
	a.End(recs[0].ID, CloseEvent{N: 3, Code: 1000, Reason: "bye", By: "client"})
	eventually(t, "the ended connection not found", 5*time.Second, func() bool {
		_, ok, err := b.Lookup(ctx, recs[0].ID)
		return err == nil && !ok
	})
	// The record keeps the event as numbered, for a survivor to post
	// under the same id should A die before the app took it.
	if rec, ok := storedRecord(t, rdb, a.node, recs[0].ID); !ok || rec.Close == nil ||
		*rec.Close != (CloseEvent{N: 3, Code: 1000, Reason: "bye", By: "client"}) || !rec.Ended {
		t.Fatalf("an ended connection's record: %+v %v", rec, ok)
	}
	a.Untrack(recs[0].ID)
	eventually(t, "the untracked record gone", 5*time.Second, func() bool {
		_, ok, err := b.Lookup(ctx, recs[0].ID)
		return err == nil && !ok
	})

	// A lost node's records are still in Redis until reaped, but its
	// connections are not open anywhere.
	killA()
	if err := rdb.Del(ctx, keysOf("cc:", a.node).lease).Err(); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.Lookup(ctx, recs[1].ID); ok || err != nil {
		t.Errorf("a connection of a node without a lease: found %v %v", ok, err)
	}
}
