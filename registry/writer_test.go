package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
	"github.com/cablecar/cablecar/pubsub"
)

func TestRegistryWritesInBatches(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	r := newTestRegistry(t, rdb, "nodeAAAA")
	// Without Run, flushes happen when the test says.

	a, b, c := testRecord("nodeAAAA", 1), testRecord("nodeAAAA", 2), testRecord("nodeAAAA", 3)
	a.Claims = json.RawMessage(`{ "sub" : "u1" }`)
	b.State = "quote \" backslash \\ newline \n bad utf8 \xff end"
	for _, rec := range []ConnRecord{a, b, c} {
		r.Track(rec)
	}
	r.Update(a.ID, "s1", []string{"x"})
	r.Update(a.ID, "s2", []string{"room:1", "room:2"})
	r.Update("c_nobody", "ignored", nil)
	if n := hlen(t, rdb, r.node); n != 0 {
		t.Fatalf("%d records written before a flush", n)
	}
	if err := r.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.stats.pipelines.Load(); got != 1 {
		t.Errorf("three tracks and two updates took %d round trips, want 1", got)
	}
	if got := r.stats.set.Load(); got != 3 {
		t.Errorf("%d records written, want 3 (updates coalesce)", got)
	}
	got, ok := storedRecord(t, rdb, r.node, a.ID)
	want := a
	want.State, want.Channels, want.Claims = "s2", []string{"room:1", "room:2"}, json.RawMessage(`{"sub":"u1"}`)
	if !ok || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("record after updates:\n got %+v\nwant %+v", got, want)
	}
	got, _ = storedRecord(t, rdb, r.node, b.ID)
	if want := validUTF8(b.State); got.State != want {
		t.Errorf("state %q, want %q", got.State, want)
	}

	// Tracked and untracked between two flushes: nothing reaches Redis.
	d := testRecord(r.node, 4)
	r.Track(d)
	r.Update(d.ID, "x", nil)
	r.Untrack(d.ID)
	if err := r.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.stats.pipelines.Load(); got != 1 {
		t.Errorf("a connection tracked and untracked before a flush cost %d more round trips", got-1)
	}

	r.Untrack(b.ID)
	r.Untrack(b.ID)
	r.Update(c.ID, "later", nil)
	if err := r.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := hlen(t, rdb, r.node); n != 2 {
		t.Errorf("HLEN %d after untracking one of three, want 2", n)
	}
	if _, ok := storedRecord(t, rdb, r.node, b.ID); ok {
		t.Error("untracked record still in Redis")
	}
	if got, _ := storedRecord(t, rdb, r.node, c.ID); got.State != "later" || got.Channels != nil {
		t.Errorf("updated record %+v", got)
	}
	if got := r.stats.pipelines.Load(); got != 2 {
		t.Errorf("%d round trips in all, want 2", got)
	}
	if got := counterValue(t, r.m.conns); got != 2 {
		t.Errorf("cablecar_registry_connections = %v, want 2", got)
	}
	if got := counterValue(t, r.m.writesOK); got != 5 {
		t.Errorf("writes ok = %v, want 5 (3 set, 1 deleted, 1 set)", got)
	}
}

// The writer flushes on its own, and 20k connections cost a handful of
// round trips, not 20k.
func TestRegistryFlushes20kInFewRoundTrips(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	r := newTestRegistry(t, rdb, "nodeAAAA")
	run(t, r, nil)
	const n = 20000
	recs := trackN(r, n)
	eventually(t, "20k records in Redis", 10*time.Second, func() bool { return hlen(t, rdb, r.node) == n })
	trips := r.stats.pipelines.Load()
	t.Logf("20000 records written in %d round trips", trips)
	if trips > 100 {
		t.Errorf("%d round trips for %d records", trips, n)
	}
	for _, rec := range recs {
		r.Untrack(rec.ID)
	}
	eventually(t, "every record deleted", 10*time.Second, func() bool { return hlen(t, rdb, r.node) == 0 })
	if got := r.stats.pipelines.Load() - trips; got > 100 {
		t.Errorf("%d round trips to delete %d records", got, n)
	}
}

// Written returns once what was tracked before is in Redis: the moment
// from which a crash no longer loses the connection's close event.
func TestRegistryWritten(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	r := newTestRegistry(t, rdb, "nodeAAAA")
	ctx := t.Context()

	// Nothing is written before Run has listed the node.
	rec := testRecord(r.node, 0)
	r.Track(rec)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := r.Written(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Written before Run: %v, want the ctx's error", err)
	}
	if hlen(t, rdb, r.node) != 0 {
		t.Error("a record was written before the node was listed")
	}

	run(t, r, nil)
	for i := range 50 {
		rec := testRecord(r.node, i)
		r.Track(rec)
		if err := r.Written(ctx); err != nil {
			t.Fatal(err)
		}
		if !rdb.HExists(ctx, keysOf("cc:", r.node).conns, rec.ID).Val() {
			t.Fatalf("record %d not in Redis when Written returned", i)
		}
		if !rdb.SIsMember(ctx, "cc:~nodes", r.node).Val() {
			t.Fatal("a record is in Redis, its node not listed")
		}
	}
	// Tracked and untracked at once: nothing to wait for.
	d := testRecord(r.node, 99)
	r.Track(d)
	r.Untrack(d.ID)
	if err := r.Written(ctx); err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	r.Track(testRecord(r.node, 100))
	short, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := r.Written(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Written with Redis down: %v, want the ctx's error", err)
	}
	if err := r.Leave(short); err == nil {
		t.Error("Leave with Redis down succeeded")
	}
	if err := r.Written(ctx); err == nil {
		t.Error("Written after Leave: no error")
	}
}

// Redis restarted empty: the living node writes its lease and every
// record again, those changed during the outage included, and what waits
// meanwhile is one entry per connection, not per change.
func TestRegistryRewritesAfterRedisRestart(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	// A lease that outlives the restart: this test is about a node that
	// kept it, not one fenced (lease.go's tests). With regTTL a redis-server
	// slow to come back on a loaded machine lapsed it (seen in make test).
	a := New(rdb, Config{Prefix: "cc:", Node: "nodeAAAA", LeaseTTL: 5 * time.Second},
		zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel), prometheus.NewRegistry())
	run(t, a, nil)
	recs := trackN(a, 100)
	eventually(t, "records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 100 })

	srv.Kill()
	var more []ConnRecord
	for i := range 10 {
		rec := testRecord(a.node, 1000+i)
		more = append(more, rec)
		a.Track(rec)
	}
	for _, rec := range recs[:5] {
		a.Untrack(rec.ID)
	}
	for i := range 2000 {
		a.Update(recs[50].ID, "s"+strconv.Itoa(i), nil)
	}
	if p := a.pending(); p > 115 {
		t.Errorf("%d changes wait while Redis is down, more than one per connection", p)
	}
	eventually(t, "a lease refresh to fail", 5*time.Second, func() bool { return counterValue(t, a.m.leaseFailures) > 0 })
	srv.Start()

	want := sortedIDs(append(slices.Clone(recs[5:]), more...))
	eventually(t, "every live record written again", 10*time.Second, func() bool {
		ids, err := rdb.HKeys(t.Context(), keysOf("cc:", a.node).conns).Result()
		slices.Sort(ids)
		return err == nil && slices.Equal(ids, want)
	})
	if got, _ := storedRecord(t, rdb, a.node, recs[50].ID); got.State != "s1999" {
		t.Errorf("state after the outage %q, want the last one", got.State)
	}
	eventually(t, "the lease and the node set back", 5*time.Second, func() bool {
		return rdb.Exists(t.Context(), keysOf("cc:", a.node).lease).Val() == 1 &&
			rdb.SIsMember(t.Context(), "cc:~nodes", a.node).Val()
	})
	if counterValue(t, a.m.leaseFailures) == 0 {
		t.Error("no lease refresh failure counted during the outage")
	}
}

// realisticRecord is what a browser connection looks like: a cookie of
// about 200 bytes, a 40-byte state, two channels.
func realisticRecord(node string) ConnRecord {
	return ConnRecord{
		ID:   pubsub.NewConnectionID(node),
		Path: "/cable?room=1",
		Headers: [][2]string{
			{"Host", "chat.example.com"},
			{"X-Forwarded-For", "203.0.113.195, 10.0.0.12"},
			{"X-Forwarded-Proto", "https"},
			{"Cookie", "_app_session=" + strings.Repeat("aZ09", 45) + "; locale=en"},
		},
		State:    "user:123456;team:42;" + strings.Repeat("x", 20),
		Channels: []string{"room:1", "user:123456"},
	}
}

func usedMemory(t testing.TB, rdb *redis.Client) int64 {
	t.Helper()
	info, err := rdb.Info(t.Context(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no used_memory in INFO memory")
	return 0
}

func TestRegistryMemoryPerConnection(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	r := newTestRegistry(t, rdb, "nodeAAAA")
	// A record first, so that the hash itself is not counted.
	r.Track(realisticRecord(r.node))
	if err := r.flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	const n = 10000
	recs := make([]ConnRecord, n)
	for i := range recs {
		recs[i] = realisticRecord(r.node)
	}
	before := usedMemory(t, rdb)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapBefore := ms.HeapAlloc
	for _, rec := range recs {
		r.Track(rec)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapPending := (int64(ms.HeapAlloc) - int64(heapBefore)) / n
	if err := r.flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapPer := (int64(ms.HeapAlloc) - int64(heapBefore)) / n
	after := usedMemory(t, rdb)
	v, _ := rdb.HGet(t.Context(), keysOf("cc:", r.node).conns, recs[0].ID).Result()
	per := (after - before) / n
	t.Logf("Redis memory per tracked connection: %d bytes (record JSON %d bytes, +%d overhead); "+
		"this node's heap: %d bytes each once written (%d while waiting to be)",
		per, len(v), per-int64(len(v)), heapPer, heapPending)
	if per > 2*int64(len(v))+200 {
		t.Errorf("%d bytes of Redis per connection for a %d-byte record", per, len(v))
	}
	runtime.KeepAlive(recs)
}

// BenchmarkRegistryTrack measures connections tracked and untracked per
// second through the writer into a real Redis, 10k of them live at a time.
func BenchmarkRegistryTrack(b *testing.B) {
	srv := testsupport.StartRedis(b)
	rdb := srv.Client(b)
	r := newTestRegistry(b, rdb, "nodeAAAA")
	run(b, r, nil)
	const window = 10000
	proto := realisticRecord(r.node)
	ids := make([]string, 0, b.N)
	for i := range b.N {
		ids = append(ids, fmt.Sprintf("c_%s%016d", r.node, i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		rec := proto
		rec.ID = ids[i]
		r.Track(rec)
		if i >= window {
			r.Untrack(ids[i-window])
		}
	}
	if err := r.flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if got, want := hlen(b, rdb, r.node), int64(min(b.N, window)); got != want {
		b.Fatalf("HLEN %d, want %d", got, want)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "tracks/s")
	b.ReportMetric(float64(r.stats.pipelines.Load()), "round-trips")
}
