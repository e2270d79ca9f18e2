package pubsub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// The registry is tested against a real redis-server: what matters is
// what lands in Redis, in how many round trips, and what survives it
// restarting.

const regTTL = 600 * time.Millisecond

// regServer is a redis-server on a free loopback port, without
// persistence, killed when the test ends.
type regServer struct {
	t    testing.TB
	addr string
	args []string
	cmd  *exec.Cmd
}

func regRedisBinary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed: the registry is tested against a real one (apt-get install redis-server)")
	}
	return bin
}

func startRegRedis(t testing.TB, extra ...string) *regServer {
	t.Helper()
	regRedisBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s := &regServer{t: t, addr: "127.0.0.1:" + strconv.Itoa(port)}
	s.args = append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", t.TempDir()}, extra...)
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *regServer) start() {
	s.t.Helper()
	s.cmd = exec.Command(regRedisBinary(s.t), s.args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s did not answer within 10s", s.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *regServer) kill() {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

func (s *regServer) client(t testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: s.addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// startRegCluster starts three masters, joins them into a cluster and
// returns a cluster client.
func startRegCluster(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Skip("redis-cli is not installed: it forms the test cluster")
	}
	var addrs []string
	for range 3 {
		s := startRegRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(t.TempDir(), "nodes.conf"))
		addrs = append(addrs, s.addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, a := range addrs {
		rdb := redis.NewClient(&redis.Options{Addr: a})
		regEventually(t, "cluster_state:ok on "+a, 20*time.Second, func() bool {
			info, _ := rdb.ClusterInfo(context.Background()).Result()
			return strings.Contains(info, "cluster_state:ok")
		})
		rdb.Close()
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { rdb.Close() })
	regEventually(t, "the cluster client to see every slot", 20*time.Second, func() bool {
		var n atomic.Int32
		err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
			n.Add(1)
			return c.Ping(ctx).Err()
		})
		return err == nil && n.Load() == 3
	})
	return rdb
}

func regEventually(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newTestRegistry(t testing.TB, rdb redis.UniversalClient, node string) *Registry {
	t.Helper()
	return NewRegistry(rdb, RegistryConfig{Prefix: "cc:", Node: node, LeaseTTL: regTTL}, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel), prometheus.NewRegistry())
}

// run starts r.Run; the returned kill stops it without Leave, as kill -9
// would: the records stay, the lease lapses.
func run(t testing.TB, r *Registry, reap func(context.Context, string, []ConnRecord) error) (kill func()) {
	t.Helper()
	if reap == nil {
		reap = func(context.Context, string, []ConnRecord) error { return nil }
	}
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx, reap)
	var once sync.Once
	kill = func() {
		once.Do(func() {
			cancel()
			select {
			case <-r.runDone:
			case <-time.After(5 * time.Second):
				t.Errorf("Run of %s did not return within 5s of its ctx ending", r.node)
			}
		})
	}
	t.Cleanup(kill)
	return kill
}

// reaper records what reap is handed.
type reaper struct {
	mu    sync.Mutex
	calls []reapCall
	fail  func(call int) error // nil: every call succeeds
	delay time.Duration
}

type reapCall struct {
	by, node string
	recs     []ConnRecord
}

func (rp *reaper) reapAs(by string) func(context.Context, string, []ConnRecord) error {
	return func(ctx context.Context, node string, recs []ConnRecord) error {
		if rp.delay > 0 {
			select {
			case <-time.After(rp.delay):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		rp.mu.Lock()
		defer rp.mu.Unlock()
		rp.calls = append(rp.calls, reapCall{by: by, node: node, recs: recs})
		if rp.fail != nil {
			return rp.fail(len(rp.calls))
		}
		return nil
	}
}

func (rp *reaper) snapshot() []reapCall {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return slices.Clone(rp.calls)
}

// reapedIDs is every connection id handed to reap, sorted, repeats kept.
func (rp *reaper) reapedIDs() []string {
	var ids []string
	for _, c := range rp.snapshot() {
		for _, rec := range c.recs {
			ids = append(ids, rec.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

func testRecord(node string, i int) ConnRecord {
	return ConnRecord{
		ID:       NewConnectionID(node),
		Path:     "/cable?room=" + strconv.Itoa(i),
		Headers:  [][2]string{{"Host", "example.com"}, {"Cookie", "session=" + strconv.Itoa(i)}},
		State:    "state-" + strconv.Itoa(i),
		Channels: []string{"room:" + strconv.Itoa(i)},
	}
}

func trackN(r *Registry, n int) []ConnRecord {
	recs := make([]ConnRecord, n)
	for i := range recs {
		recs[i] = testRecord(r.node, i)
		r.Track(recs[i])
	}
	return recs
}

func sortedIDs(recs []ConnRecord) []string {
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.ID
	}
	slices.Sort(ids)
	return ids
}

func hlen(t testing.TB, rdb redis.UniversalClient, node string) int64 {
	t.Helper()
	n, err := rdb.HLen(context.Background(), keysOf("cc:", node).conns).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func storedRecord(t testing.TB, rdb redis.UniversalClient, node, id string) (ConnRecord, bool) {
	t.Helper()
	s, err := rdb.HGet(context.Background(), keysOf("cc:", node).conns, id).Result()
	if errors.Is(err, redis.Nil) {
		return ConnRecord{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var rec ConnRecord
	if err := json.Unmarshal([]byte(s), &rec); err != nil {
		t.Fatalf("record %s is not JSON: %v\n%s", id, err, s)
	}
	return rec, true
}

func counterValue(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

func TestRegistryWritesInBatches(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
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
	srv := startRegRedis(t)
	rdb := srv.client(t)
	r := newTestRegistry(t, rdb, "nodeAAAA")
	run(t, r, nil)
	const n = 20000
	recs := trackN(r, n)
	regEventually(t, "20k records in Redis", 10*time.Second, func() bool { return hlen(t, rdb, r.node) == n })
	trips := r.stats.pipelines.Load()
	t.Logf("20000 records written in %d round trips", trips)
	if trips > 100 {
		t.Errorf("%d round trips for %d records", trips, n)
	}
	for _, rec := range recs {
		r.Untrack(rec.ID)
	}
	regEventually(t, "every record deleted", 10*time.Second, func() bool { return hlen(t, rdb, r.node) == 0 })
	if got := r.stats.pipelines.Load() - trips; got > 100 {
		t.Errorf("%d round trips to delete %d records", got, n)
	}
}

// Written returns once what was tracked before is in Redis: the moment
// from which a crash no longer loses the connection's close event.
func TestRegistryWritten(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
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

	srv.kill()
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

func TestRegistryKeepsItsLease(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	r := newTestRegistry(t, rdb, "nodeAAAA")
	run(t, r, nil)
	k := keysOf("cc:", r.node)
	regEventually(t, "the lease", 5*time.Second, func() bool { return rdb.Exists(t.Context(), k.lease).Val() == 1 })
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

// A node killed without Leave: a survivor posts its close events, once,
// and forgets it.
func TestRegistryReapsLostNode(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var rp reaper
	killA := run(t, a, rp.reapAs("A"))
	run(t, b, rp.reapAs("B"))
	recsA := trackN(a, 50)
	recsB := trackN(b, 5)
	regEventually(t, "A's records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 50 })

	killA()
	killed := time.Now()
	regEventually(t, "A's close events", 5*time.Second, func() bool { return len(rp.reapedIDs()) >= 50 })
	took := time.Since(killed)
	t.Logf("A reaped %v after it died (lease_ttl %v)", took.Round(time.Millisecond), regTTL)
	if took > regTTL+6*(regTTL/3) { // lease_ttl and a few rounds
		t.Errorf("reaping took %v, more than lease_ttl and a few rounds", took)
	}
	k := keysOf("cc:", a.node)
	regEventually(t, "A forgotten", 5*time.Second, func() bool {
		return !rdb.SIsMember(t.Context(), "cc:~nodes", a.node).Val()
	})
	time.Sleep(2 * regTTL) // rounds that must not reap again
	if got := rp.reapedIDs(); !slices.Equal(got, sortedIDs(recsA)) {
		t.Errorf("reaped %d ids, want A's 50 once each", len(got))
	}
	for _, c := range rp.snapshot() {
		if c.by != "B" || c.node != a.node {
			t.Errorf("reap by %s of %s", c.by, c.node)
		}
		for _, rec := range c.recs {
			if rec.Path == "" || len(rec.Headers) != 2 || rec.State == "" || len(rec.Channels) != 1 {
				t.Errorf("reaped record lacks what a close event needs: %+v", rec)
			}
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

// Of two survivors, one reaps.
func TestRegistryOneSurvivorReaps(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	var rp reaper
	rp.delay = 100 * time.Millisecond // so that the survivors' rounds overlap the reap
	regs := map[string]*Registry{}
	kills := map[string]func(){}
	for _, n := range []string{"nodeAAAA", "nodeBBBB", "nodeCCCC"} {
		regs[n] = newTestRegistry(t, rdb, n)
		kills[n] = run(t, regs[n], rp.reapAs(n))
	}
	recs := trackN(regs["nodeCCCC"], 300)
	regEventually(t, "C's records", 5*time.Second, func() bool { return hlen(t, rdb, "nodeCCCC") == 300 })
	kills["nodeCCCC"]()
	regEventually(t, "C forgotten", 10*time.Second, func() bool {
		return !rdb.SIsMember(t.Context(), "cc:~nodes", "nodeCCCC").Val()
	})
	time.Sleep(2 * regTTL)
	if got := rp.reapedIDs(); !slices.Equal(got, sortedIDs(recs)) {
		t.Errorf("reaped %d ids, want C's 300 once each", len(got))
	}
	by := map[string]bool{}
	for _, c := range rp.snapshot() {
		by[c.by] = true
	}
	if len(by) != 1 {
		t.Errorf("reaped by %v, want exactly one survivor", by)
	}
	lost := counterValue(t, regs["nodeAAAA"].m.nodeLost) + counterValue(t, regs["nodeBBBB"].m.nodeLost)
	if lost != 1 {
		t.Errorf("cablecar_node_lost_total summed over the survivors = %v, want 1", lost)
	}
}

// A node whose lease came back between a survivor's claim and its check is
// alive: nothing of it is reaped, and the claim is let go.
func TestRegistryLeaseBackIsNotReaped(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var rp reaper
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
	run(t, b, rp.reapAs("B"))
	trackN(a, 20)
	regEventually(t, "A's records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 20 })
	killA()
	regEventually(t, "B to claim A", 5*time.Second, func() bool { return hooked.Load() > 0 })
	// The lease is back: round after round, A stays.
	time.Sleep(2 * regTTL)
	if len(rp.snapshot()) != 0 {
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
	regEventually(t, "A reaped", 5*time.Second, func() bool { return len(rp.reapedIDs()) == 20 })
}

// A reaper never reaps its own node, even with its own lease gone.
func TestRegistryNeverReapsItself(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	var rp reaper
	run(t, a, rp.reapAs("A"))
	trackN(a, 10)
	regEventually(t, "records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 10 })
	time.Sleep(regTTL)
	// Called directly, with the lease gone, reapNode still refuses.
	if err := a.reapNode(t.Context(), a.node, rp.reapAs("A")); err != nil {
		t.Fatal(err)
	}
	if len(rp.snapshot()) != 0 || hlen(t, rdb, a.node) != 10 {
		t.Error("a node reaped itself")
	}
}

func TestRegistryLeaveRemovesEverything(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var rp reaper
	run(t, a, nil)
	run(t, b, rp.reapAs("B"))
	recs := trackN(a, 100)
	regEventually(t, "records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 100 })
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
	time.Sleep(2 * regTTL)
	if rdb.Exists(t.Context(), k.conns).Val() != 0 || len(rp.snapshot()) != 0 {
		t.Error("something of a node that left came back, or was reaped")
	}
}

// Leave without Run having run: still cleans up what a previous Run left.
func TestRegistryLeaveWithoutRun(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
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

// Redis restarted empty: the living node writes its lease and every
// record again, those changed during the outage included, and what waits
// meanwhile is one entry per connection, not per change.
func TestRegistryRewritesAfterRedisRestart(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	run(t, a, nil)
	recs := trackN(a, 100)
	regEventually(t, "records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 100 })

	srv.kill()
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
	time.Sleep(regTTL / 2)
	srv.start()

	want := sortedIDs(append(slices.Clone(recs[5:]), more...))
	regEventually(t, "every live record written again", 10*time.Second, func() bool {
		ids, err := rdb.HKeys(t.Context(), keysOf("cc:", a.node).conns).Result()
		slices.Sort(ids)
		return err == nil && slices.Equal(ids, want)
	})
	if got, _ := storedRecord(t, rdb, a.node, recs[50].ID); got.State != "s1999" {
		t.Errorf("state after the outage %q, want the last one", got.State)
	}
	regEventually(t, "the lease and the node set back", 5*time.Second, func() bool {
		return rdb.Exists(t.Context(), keysOf("cc:", a.node).lease).Val() == 1 &&
			rdb.SIsMember(t.Context(), "cc:~nodes", a.node).Val()
	})
	if counterValue(t, a.m.leaseFailures) == 0 {
		t.Error("no lease refresh failure counted during the outage")
	}
}

// reap failing leaves the records for a later round.
func TestRegistryRetriesFailedReap(t *testing.T) {
	srv := startRegRedis(t)
	rdb := srv.client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	rp := reaper{fail: func(call int) error {
		if call == 1 {
			return errors.New("the app is down")
		}
		return nil
	}}
	killA := run(t, a, nil)
	run(t, b, rp.reapAs("B"))
	recs := trackN(a, 10)
	regEventually(t, "records", 5*time.Second, func() bool { return hlen(t, rdb, a.node) == 10 })
	killA()
	regEventually(t, "a second reap", 5*time.Second, func() bool { return len(rp.snapshot()) >= 2 })
	regEventually(t, "A forgotten", 5*time.Second, func() bool {
		return !rdb.SIsMember(t.Context(), "cc:~nodes", a.node).Val()
	})
	calls := rp.snapshot()
	if len(calls) != 2 {
		t.Fatalf("%d reap calls, want 2", len(calls))
	}
	for i, c := range calls {
		if got := sortedIDs(c.recs); !slices.Equal(got, sortedIDs(recs)) {
			t.Errorf("call %d had %d records, want all 10", i+1, len(got))
		}
	}
	if hlen(t, rdb, a.node) != 0 {
		t.Error("records left")
	}
	if got := counterValue(t, b.m.lostConns); got != 10 {
		t.Errorf("cablecar_node_lost_connections_total = %v, want 10 (a failed reap is not counted)", got)
	}
}

// On Redis Cluster, every command and script keeps to one slot: a
// cross-slot one would fail with CROSSSLOT.
func TestRegistryOnCluster(t *testing.T) {
	rdb := startRegCluster(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	var rp reaper
	killA := run(t, a, nil)
	run(t, b, rp.reapAs("B"))
	recs := trackN(a, 1500) // more than one HSCAN page
	trackN(b, 10)
	regEventually(t, "A's records", 10*time.Second, func() bool { return hlen(t, rdb, a.node) == 1500 })
	killA()
	regEventually(t, "A reaped and forgotten", 10*time.Second, func() bool {
		return len(rp.reapedIDs()) == 1500 && !rdb.SIsMember(t.Context(), "cc:~nodes", a.node).Val()
	})
	if got := rp.reapedIDs(); !slices.Equal(got, sortedIDs(recs)) {
		t.Errorf("reaped %d ids, want A's 1500 once each", len(got))
	}
	if calls := len(rp.snapshot()); calls < 2 {
		t.Errorf("1500 records reaped in %d call(s): want pages", calls)
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

func TestRecordJSONRoundTrip(t *testing.T) {
	for _, rec := range []ConnRecord{
		{ID: "c_1", Path: "/"},
		{ID: "c_2", Path: "/cable?a=1&b=<2>", Headers: [][2]string{{"Cookie", "a=\"b\"; c=\\d"}}, State: "\u2028\t\x01",
			Channels: []string{"a", "b:c"}, Claims: json.RawMessage(`{"sub":"u","n":[1,2]}`)},
		{ID: "c_3", Path: "/p", Claims: json.RawMessage(`not json`)},
	} {
		o := op{head: encodeHead(rec), state: rec.State, channels: rec.Channels}
		b := appendRecord(nil, &o)
		var got ConnRecord
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v\n%s", rec.ID, err, b)
		}
		if !json.Valid(rec.Claims) {
			rec.Claims = nil
		}
		if fmt.Sprint(got) != fmt.Sprint(rec) {
			t.Errorf("round trip:\n got %+v\nwant %+v\n%s", got, rec, b)
		}
	}
}

func FuzzRecordJSON(f *testing.F) {
	f.Add("c_1", "/cable?room=1", "Cookie", "a=b", "state", "room:1")
	f.Add("c_\xff", "/\"\\", "X", "\x00\u2028", "\xed\xa0\x80", "")
	f.Fuzz(func(t *testing.T, id, path, hk, hv, state, ch string) {
		rec := ConnRecord{ID: id, Path: path, Headers: [][2]string{{hk, hv}}, State: state, Channels: []string{ch}}
		o := op{head: encodeHead(rec), state: rec.State, channels: rec.Channels}
		b := appendRecord(nil, &o)
		var got ConnRecord
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("invalid JSON: %v\n%q", err, b)
		}
		fix := validUTF8
		if got.ID != fix(id) || got.Path != fix(path) || got.Headers[0] != [2]string{fix(hk), fix(hv)} ||
			got.State != fix(state) || got.Channels[0] != fix(ch) {
			t.Errorf("round trip %+v → %+v", rec, got)
		}
	})
}

// validUTF8 replaces each byte of s that is not UTF-8 with U+FFFD, as
// encoding/json does.
func validUTF8(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// realisticRecord is what a browser connection looks like: a cookie of
// about 200 bytes, a 40-byte state, two channels.
func realisticRecord(node string) ConnRecord {
	return ConnRecord{
		ID:   NewConnectionID(node),
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
	srv := startRegRedis(t)
	rdb := srv.client(t)
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
	srv := startRegRedis(b)
	rdb := srv.client(b)
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

// A node that cannot refresh its lease for lease_ttl gives its connections
// up (OnLapse gets them all), since another node may have sent their
// node_lost closes. With no other node to do so, it posts them itself once
// Redis answers again, and deletes their records; connections tracked
// after the fence stay.
func TestRegistryFencesAfterLapseAndPostsItsOwnLeftovers(t *testing.T) {
	s := startRegRedis(t)
	rdb := s.client(t)
	node := NewNodeID()
	r := newTestRegistry(t, rdb, node)
	var mu sync.Mutex
	var lapsed []string
	r.OnLapse(func(ids []string) {
		mu.Lock()
		lapsed = append(lapsed, ids...)
		mu.Unlock()
	})
	rp := &reaper{}
	run(t, r, rp.reapAs("self"))
	recs := trackN(r, 5)
	regEventually(t, "the records in Redis", 5*time.Second, func() bool { return hlen(t, rdb, node) == 5 })

	// Every client, the registry's included, stalls past lease_ttl: the
	// refreshes time out as in a partition.
	admin := s.client(t)
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", (3 * regTTL).Milliseconds(), "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	regEventually(t, "OnLapse with every connection", 10*regTTL, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lapsed) == len(recs)
	})
	after := testRecord(node, 99)
	r.Track(after)

	regEventually(t, "the leftovers posted by the node itself", 20*regTTL, func() bool {
		return len(rp.reapedIDs()) == len(recs)
	})
	if got, want := rp.reapedIDs(), sortedIDs(recs); !slices.Equal(got, want) {
		t.Fatalf("reaped %v, want %v", got, want)
	}
	for _, c := range rp.snapshot() {
		if c.node != node {
			t.Fatalf("reap called for node %s, want this node %s", c.node, node)
		}
	}
	regEventually(t, "only the connection tracked after the fence left in Redis", 5*time.Second, func() bool {
		_, ok := storedRecord(t, rdb, node, after.ID)
		return ok && hlen(t, rdb, node) == 1
	})
}
