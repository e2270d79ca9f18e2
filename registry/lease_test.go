package registry

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cablecar/cablecar/internal/testsupport"
	"github.com/cablecar/cablecar/pubsub"
)

func TestRegistryKeepsItsLease(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	r := newTestRegistry(t, rdb, "nodeAAAA")
	run(t, r, nil)
	k := keysOf("cc:", r.node)
	// The lease is taken before the node is listed (a node listed without
	// one is lost), so wait for both.
	eventually(t, "the lease and the listing", 5*time.Second, func() bool {
		return rdb.Exists(t.Context(), k.lease).Val() == 1 && rdb.SIsMember(t.Context(), "cc:~nodes", r.node).Val()
	})
	deadline := time.Now().Add(3 * regTTL)
	for time.Now().Before(deadline) {
		ttl, err := rdb.PTTL(t.Context(), k.lease).Result()
		if err != nil || ttl <= 0 || ttl > regTTL {
			t.Fatalf("lease PTTL %v (%v), want within (0, %v]", ttl, err, regTTL)
		}
		if !rdb.SIsMember(t.Context(), "cc:~nodes", r.node).Val() {
			t.Fatal("node not in cc:~nodes")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A node that cannot refresh its lease for lease_ttl gives its connections
// up (OnLapse gets them all), since another node may have sent their
// node_lost closes. With no other node to do so, it posts them itself once
// Redis answers again, and deletes their records; connections tracked
// after the fence stay.
func TestRegistryFencesAfterLapseAndPostsItsOwnLeftovers(t *testing.T) {
	s := testsupport.StartRedis(t)
	rdb := s.Client(t)
	node := pubsub.NewNodeID()
	r := newTestRegistry(t, rdb, node)
	var mu sync.Mutex
	var lapsed []string
	r.OnLapse(func(ids []string) {
		mu.Lock()
		lapsed = append(lapsed, ids...)
		mu.Unlock()
	})
	var p poster
	run(t, r, p.as("self"))
	recs := trackN(r, 5)
	eventually(t, "the records in Redis", 5*time.Second, func() bool { return hlen(t, rdb, node) == 5 })

	// Every client, the registry's included, stalls past lease_ttl: the
	// refreshes time out as in a partition.
	admin := s.Client(t)
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", (3 * regTTL).Milliseconds(), "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "OnLapse with every connection", 10*regTTL, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lapsed) == len(recs)
	})
	after := testRecord(node, 99)
	r.Track(after)

	eventually(t, "the leftovers posted by the node itself", 20*regTTL, func() bool {
		return len(p.postedIDs()) == len(recs)
	})
	if got, want := p.postedIDs(), sortedIDs(recs); !slices.Equal(got, want) {
		t.Fatalf("posted %v, want %v", got, want)
	}
	for _, c := range p.snapshot() {
		if c.node != node {
			t.Fatalf("posted for node %s, want this node %s", c.node, node)
		}
	}
	eventually(t, "only the connection tracked after the fence left in Redis", 5*time.Second, func() bool {
		_, ok := storedRecord(t, rdb, node, after.ID)
		return ok && hlen(t, rdb, node) == 1
	})
}
