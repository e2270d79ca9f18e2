package registry

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// A node killed without Leave: a survivor posts its close events, once,
// and forgets it.
func TestRegistryReapsLostNode(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var p poster
	killA := run(t, a, p.as("A"))
	run(t, b, p.as("B"))
	recsA := trackN(a, 50)
	recsB := trackN(b, 5)
	eventually(t, "A's records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 50 })

	killA()
	killed := time.Now()
	eventually(t, "A's close events", 5*time.Second, func() bool { return len(p.postedIDs()) >= 50 })
	took := time.Since(killed)
	t.Logf("A reaped %v after it died (lease_ttl %v)", took.Round(time.Millisecond), regTTL)
	if took > regTTL+6*(regTTL/3) { // lease_ttl and a few rounds
		t.Errorf("reaping took %v, more than lease_ttl and a few rounds", took)
	}
	k := keysOf("cc:", a.node)
	eventually(t, "A forgotten", 5*time.Second, func() bool { return !listed(t, rdb, a.node) })
	waitRounds(t, b, 2) // rounds that must not reap again
	if got := p.postedIDs(); !slices.Equal(got, sortedIDs(recsA)) {
		t.Errorf("posted %d ids, want A's 50 once each", len(got))
	}
	for _, c := range p.snapshot() {
		if c.by != "B" || c.node != a.node {
			t.Errorf("posted by %s for %s", c.by, c.node)
		}
		if rec := c.rec; rec.Path == "" || len(rec.Headers) != 2 || rec.State == "" || len(rec.Channels) != 1 {
			t.Errorf("posted record lacks what a close event needs: %+v", rec)
		}
	}
	if n := rdb.Exists(t.Context(), k.conns, k.lease, k.reaper).Val(); n != 0 {
		t.Errorf("%d of A's keys left", n)
	}
	if n := hlen(t, rdb, b.node); n != int64(len(recsB)) {
		t.Errorf("B's own records: %d, want %d", n, len(recsB))
	}
	if got := counterValue(t, b.m.nodeLost); got != 1 {
		t.Errorf("cablecar_node_lost_total = %v", got)
	}
	if got := counterValue(t, b.m.lostConns); got != 50 {
		t.Errorf("cablecar_node_lost_connections_total = %v", got)
	}
}

// A close event the app does not take (it is down, and close events are
// retried for an hour) holds neither the round nor the reaper: the next
// lost node is posted meanwhile. The records stay in Redis until their
// events settle, and no round hands them over again meanwhile — the
// claim is held, and the reaper remembers what it handed over.
func TestRegistryUndeliveredCloseEventsHoldNoRound(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	c := newTestRegistry(t, rdb, "nodeCCCC")
	p := poster{hold: true}
	killA := run(t, a, nil)
	run(t, b, p.as("B"))
	killC := runNoReaping(t, c)
	recsA, recsC := trackN(a, 30), trackN(c, 20)
	eventually(t, "A's and C's records", 5*time.Second, func() bool {
		return hlen(t, rdb, a.node) == 30 && hlen(t, rdb, c.node) == 20
	})
	killA()
	eventually(t, "A's close events handed over", 5*time.Second, func() bool { return len(p.postedIDs()) == 30 })
	killC()
	eventually(t, "C's too, while A's wait", 5*time.Second, func() bool { return len(p.postedIDs()) == 50 })

	waitRounds(t, b, 3)
	if got, want := p.postedIDs(), sortedIDs(append(slices.Clone(recsA), recsC...)); !slices.Equal(got, want) {
		t.Errorf("handed over %d close events, want A's and C's once each", len(got))
	}
	if hlen(t, rdb, a.node) != 30 || hlen(t, rdb, c.node) != 20 || !listed(t, rdb, a.node) {
		t.Fatal("records deleted before their close events settled")
	}
	if owner := rdb.Get(t.Context(), keysOf("cc:", a.node).reaper).Val(); owner != b.node {
		t.Errorf("A's claim held by %q, want B while its close events wait", owner)
	}

	p.release()
	eventually(t, "A and C forgotten once their close events settled", 5*time.Second, func() bool {
		return !listed(t, rdb, a.node) && !listed(t, rdb, c.node)
	})
	if hlen(t, rdb, a.node) != 0 || hlen(t, rdb, c.node) != 0 {
		t.Error("records left")
	}
	if got := counterValue(t, b.m.lostConns); got != 50 {
		t.Errorf("cablecar_node_lost_connections_total = %v, want 50", got)
	}
}

// The reaper dies with close events handed over and not delivered: their
// records are still in Redis, its claim goes, and another survivor posts
// them (same records, so the same event ids for the app to drop).
func TestRegistryReaperLostMidwayLeavesRecordsToAnother(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	c := newTestRegistry(t, rdb, "nodeCCCC")
	pb := poster{hold: true}
	var pc poster
	killA := run(t, a, nil)
	killB := run(t, b, pb.as("B"))
	recs := trackN(a, 40)
	eventually(t, "A's records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 40 })
	// C joins only now, so that B is the one to claim A.
	killA()
	eventually(t, "B to hand over A's close events", 5*time.Second, func() bool { return len(pb.postedIDs()) == 40 })
	run(t, c, pc.as("C"))
	killB()
	for _, call := range pb.snapshot() {
		select {
		case <-call.stop:
		default:
			t.Fatal("B stopped reaping, and its close events were not told to stop")
		}
	}
	eventually(t, "C to post A's close events", 10*time.Second, func() bool { return !listed(t, rdb, a.node) })
	if got := pc.postedIDs(); !slices.Equal(got, sortedIDs(recs)) {
		t.Errorf("C posted %d close events, want A's 40", len(got))
	}
	if hlen(t, rdb, a.node) != 0 {
		t.Error("records left")
	}
}

// Of three survivors, one reaps, even while the close events wait.
func TestRegistryOneSurvivorReaps(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	p := poster{hold: true}
	regs := map[string]*Registry{}
	kills := map[string]func(){}
	for _, n := range []string{"nodeAAAA", "nodeBBBB", "nodeCCCC"} {
		regs[n] = newTestRegistry(t, rdb, n)
		kills[n] = run(t, regs[n], p.as(n))
	}
	recs := trackN(regs["nodeCCCC"], 300)
	eventually(t, "C's records", 5*time.Second, func() bool { return hlen(t, rdb, "nodeCCCC") == 300 })
	kills["nodeCCCC"]()
	eventually(t, "C's close events handed over", 10*time.Second, func() bool { return len(p.postedIDs()) >= 300 })
	waitRounds(t, regs["nodeAAAA"], 2)
	waitRounds(t, regs["nodeBBBB"], 2)
	p.release()
	eventually(t, "C forgotten", 10*time.Second, func() bool { return !listed(t, rdb, "nodeCCCC") })
	if got := p.postedIDs(); !slices.Equal(got, sortedIDs(recs)) {
		t.Errorf("posted %d ids, want C's 300 once each", len(got))
	}
	by := map[string]bool{}
	for _, c := range p.snapshot() {
		by[c.by] = true
	}
	if len(by) != 1 {
		t.Errorf("posted by %v, want exactly one survivor", by)
	}
	// The counter moves just after the node is forgotten (SREM), so it is
	// waited for; a second count would show on the next rounds.
	lost := func() float64 {
		return counterValue(t, regs["nodeAAAA"].m.nodeLost) + counterValue(t, regs["nodeBBBB"].m.nodeLost)
	}
	eventually(t, "cablecar_node_lost_total counted", 5*time.Second, func() bool { return lost() >= 1 })
	waitRounds(t, regs["nodeAAAA"], 1)
	waitRounds(t, regs["nodeBBBB"], 1)
	if got := lost(); got != 1 {
		t.Errorf("cablecar_node_lost_total summed over the survivors = %v, want 1", got)
	}
}

// A node whose lease came back between a survivor's claim and its check is
// alive: nothing of it is reaped, and the claim is let go.
func TestRegistryLeaseBackIsNotReaped(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var p poster
	var comeBack atomic.Bool
	comeBack.Store(true)
	var hooked atomic.Int32
	k := keysOf("cc:", a.node)
	b.afterClaim = func(node string) {
		if node == a.node && comeBack.Load() {
			// As A would, had it only been cut off for a while.
			rdb.Set(context.Background(), k.lease, a.node, regTTL)
			hooked.Add(1)
		}
	}
	killA := run(t, a, nil)
	run(t, b, p.as("B"))
	trackN(a, 20)
	eventually(t, "A's records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 20 })
	killA()
	eventually(t, "B to claim A", 5*time.Second, func() bool { return hooked.Load() > 0 })
	// The lease is back: round after round, A stays.
	waitRounds(t, b, 2)
	if len(p.snapshot()) != 0 {
		t.Fatal("a node whose lease came back was reaped")
	}
	if n := hlen(t, rdb, a.node); n != 20 {
		t.Errorf("%d of A's 20 records left", n)
	}
	if rdb.Exists(t.Context(), k.reaper).Val() != 0 {
		t.Error("the claim on a node found alive was kept")
	}

	// It lapses for good: now it is reaped.
	comeBack.Store(false)
	eventually(t, "A reaped", 5*time.Second, func() bool { return len(p.postedIDs()) == 20 })
}

// A reaper never reaps its own node, even with its own lease gone.
func TestRegistryNeverReapsItself(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	var p poster
	run(t, a, p.as("A"))
	trackN(a, 10)
	eventually(t, "records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 10 })
	waitRounds(t, a, 2)
	if err := rdb.Del(t.Context(), a.keys.lease).Err(); err != nil {
		t.Fatal(err)
	}
	// Asked directly, with the lease gone, it still refuses.
	if claimed, err := a.claim(t.Context(), a.node); claimed || err != nil {
		t.Fatalf("claim of its own node: %v %v", claimed, err)
	}
	if len(p.snapshot()) != 0 || hlen(t, rdb, a.node) != 10 {
		t.Error("a node reaped itself")
	}
}

// No room for a close event (too many wait on this node): its record
// stays and is offered again later, and each close event is handed over
// once.
func TestRegistryOffersAgainWhenNoRoom(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	p := poster{refuse: func(try int) bool { return try == 4 || try == 5 }}
	killA := run(t, a, nil)
	run(t, b, p.as("B"))
	recs := trackN(a, 10)
	eventually(t, "records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 10 })
	killA()
	eventually(t, "A forgotten", 5*time.Second, func() bool { return !listed(t, rdb, a.node) })
	if got := p.postedIDs(); !slices.Equal(got, sortedIDs(recs)) {
		t.Errorf("handed over %v, want each of A's 10 once", got)
	}
	p.mu.Lock()
	tries := p.tries
	p.mu.Unlock()
	if tries != 12 {
		t.Errorf("%d offers, want 12 (10 and the 2 refused)", tries)
	}
	if hlen(t, rdb, a.node) != 0 {
		t.Error("records left")
	}
	if got := counterValue(t, b.m.lostConns); got != 10 {
		t.Errorf("cablecar_node_lost_connections_total = %v, want 10", got)
	}
}

// On Redis Cluster, every command and script keeps to one slot: a
// cross-slot one would fail with CROSSSLOT.
func TestRegistryOnCluster(t *testing.T) {
	rdb := testsupport.StartCluster(t).Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var p poster
	killA := run(t, a, nil)
	run(t, b, p.as("B"))
	recs := trackN(a, 1500) // more than one HSCAN page
	trackN(b, 10)
	eventually(t, "A's records", 10*time.Second, func() bool { return hlen(t, rdb, a.node) == 1500 })
	killA()
	eventually(t, "A reaped and forgotten", 10*time.Second, func() bool {
		return len(p.postedIDs()) == 1500 && !listed(t, rdb, a.node)
	})
	if got := p.postedIDs(); !slices.Equal(got, sortedIDs(recs)) {
		t.Errorf("posted %d ids, want A's 1500 once each", len(got))
	}
	// B leaves with its 10 close events undelivered: handed over, on
	// one slot too.
	if err := b.Leave(t.Context()); err != nil {
		t.Fatal(err)
	}
	k := keysOf("cc:", b.node)
	if n := hlen(t, rdb, b.node); n != 10 {
		t.Errorf("B left %d records, want its 10 undelivered", n)
	}
	if rdb.Exists(t.Context(), k.lease).Val() != 0 {
		t.Error("B's lease still held after Leave")
	}
}
