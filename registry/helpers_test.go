package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
	"github.com/cablecar/cablecar/pubsub"
)

// The registry is tested against a real redis-server: what matters is
// what lands in Redis, in how many round trips, and what survives it
// restarting.

const regTTL = 600 * time.Millisecond

var eventually = testsupport.Eventually

func newTestRegistry(t testing.TB, rdb redis.UniversalClient, node string) *Registry {
	t.Helper()
	return New(rdb, Config{Prefix: "cc:", Node: node, LeaseTTL: regTTL}, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel), prometheus.NewRegistry())
}

// run starts r.Run; the returned kill stops it without Leave, as kill -9
// would: the records stay, the lease lapses.
func run(t testing.TB, r *Registry, post PostFunc) (kill func()) {
	t.Helper()
	if post == nil {
		post = func(_ string, _ ConnRecord, _ <-chan struct{}, settled func()) bool { settled(); return true }
	}
	return start(t, r, post)
}

// runNoReaping runs r as a node that keeps its lease and records but never
// reaps (Run with no PostFunc), for tests that need one survivor to be
// the reaper.
func runNoReaping(t testing.TB, r *Registry) (kill func()) {
	t.Helper()
	return start(t, r, nil)
}

func start(t testing.TB, r *Registry, post PostFunc) (kill func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx, post)
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

// waitRounds waits until r has completed n more reap rounds: a check that
// nothing happened is made after the registry has had its chances.
func waitRounds(t testing.TB, r *Registry, n int) {
	t.Helper()
	from := r.rounds.Load()
	eventually(t, fmt.Sprintf("%d reap rounds of %s", n, r.node), 2*regTTL+time.Duration(n)*regTTL, func() bool {
		return r.rounds.Load() >= from+int64(n)
	})
}

// poster is a PostFunc that records what it is handed. Each close event
// settles at once, unless hold is set: then only on release. refuse,
// when set, says which calls find no room.
type poster struct {
	mu     sync.Mutex
	calls  []postCall
	hold   bool
	held   []func()
	refuse func(call int) bool
	tries  int
}

type postCall struct {
	by, node string
	rec      ConnRecord
	stop     <-chan struct{}
}

func (p *poster) as(by string) PostFunc {
	return func(node string, rec ConnRecord, stop <-chan struct{}, settled func()) bool {
		p.mu.Lock()
		p.tries++
		if p.refuse != nil && p.refuse(p.tries) {
			p.mu.Unlock()
			return false
		}
		p.calls = append(p.calls, postCall{by: by, node: node, rec: rec, stop: stop})
		if p.hold {
			p.held = append(p.held, settled)
			p.mu.Unlock()
			return true
		}
		p.mu.Unlock()
		settled()
		return true
	}
}

// release settles every close event held.
func (p *poster) release() {
	p.mu.Lock()
	held := p.held
	p.held, p.hold = nil, false
	p.mu.Unlock()
	for _, f := range held {
		f()
	}
}

func (p *poster) snapshot() []postCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// postedIDs is every connection id handed over, sorted, repeats kept.
func (p *poster) postedIDs() []string {
	var ids []string
	for _, c := range p.snapshot() {
		ids = append(ids, c.rec.ID)
	}
	slices.Sort(ids)
	return ids
}

func testRecord(node string, i int) ConnRecord {
	return ConnRecord{
		ID:       pubsub.NewConnectionID(node),
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

func listed(t testing.TB, rdb redis.UniversalClient, node string) bool {
	t.Helper()
	return rdb.SIsMember(t.Context(), "cc:~nodes", node).Val()
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
