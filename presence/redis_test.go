package presence

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// node is one node's presence against a shared Redis, with the lease the
// registry would keep.
type node struct {
	name  string
	store *Redis
	tr    *Tracker
	rec   *recorder
	done  chan struct{}
	kill  func() // the node dies: no more lease, nothing cleaned up
}

const testTTL = 600 * time.Millisecond

func startNode(t *testing.T, rdb redis.UniversalClient, name string, delay time.Duration) *node {
	t.Helper()
	return startNodeWith(t, rdb, name, delay, 0)
}

// startNodeWith: reapDelay is the store's LeaveDelay (for lost nodes).
func startNodeWith(t *testing.T, rdb redis.UniversalClient, name string, delay, reapDelay time.Duration) *node {
	t.Helper()
	n := &node{name: name, done: make(chan struct{})}
	n.store = NewRedis(rdb, RedisConfig{Prefix: "t:", Node: name, LeaseTTL: testTTL, Outbox: true, LeaveDelay: reapDelay}, zerolog.Nop())
	n.rec = &recorder{}
	n.tr = NewTracker(Config{LeaveDelay: delay, Notify: n.rec.add}, n.store, zerolog.Nop())
	go n.tr.Run()
	ctx, cancel := context.WithCancel(context.Background())
	// The lease, as the registry keeps it.
	lease := n.store.leaseKey(name)
	go func() {
		defer close(n.done)
		t := time.NewTicker(testTTL / 3)
		defer t.Stop()
		for {
			rdb.Set(ctx, lease, name, testTTL)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		n.store.Run(ctx, n.tr.RewriteAll, func(evs []Event) {
			for _, ev := range evs {
				if !ev.Taken {
					n.rec.add(ev)
				}
			}
		})
	}()
	var once bool
	n.kill = func() {
		if once {
			return
		}
		once = true
		n.tr.Close()
		n.tr.Wait()
		cancel()
		<-n.done
		<-runDone
	}
	t.Cleanup(n.kill)
	return n
}

func TestRedisSameIDTwoNodes(t *testing.T) {
	rdb := testsupport.StartRedis(t).Client(t)
	a := startNode(t, rdb, "nodeA", time.Hour)
	b := startNode(t, rdb, "nodeB", time.Hour)
	a.tr.Join("ca", "room", "u1", json.RawMessage(`"a"`))
	synced(t, a.tr)
	b.tr.Join("cb", "room", "u1", json.RawMessage(`"b"`))
	synced(t, b.tr)
	a.rec.want(t, "join room u1")
	if got := b.rec.list(); len(got) != 0 {
		t.Fatalf("the second node's join of a present id made %q", got)
	}
	s, err := a.tr.Read(context.Background(), "room")
	if err != nil || len(s.Members) != 1 || s.Members[0].Connections != 2 {
		t.Fatalf("snapshot %+v, %v", s, err)
	}
	a.tr.Leave("ca", "room")
	synced(t, a.tr)
	b.tr.Leave("cb", "room")
	b.rec.want(t, "leave room u1")
	if got := a.rec.list(); len(got) != 1 {
		t.Fatalf("node A heard %q", got)
	}
}

func TestRedisLostNodeLeaves(t *testing.T) {
	rdb := testsupport.StartRedis(t).Client(t)
	a := startNode(t, rdb, "nodeA", time.Hour)
	b := startNode(t, rdb, "nodeB", time.Hour)
	a.tr.Join("ca", "room", "shared", nil)
	a.tr.Join("ca2", "room", "alone", nil)
	synced(t, a.tr)
	b.tr.Join("cb", "room", "shared", nil)
	synced(t, b.tr)
	a.kill() // its lease lapses; its fields stay until reaped
	b.rec.want(t, "leave room alone")
	s, _ := b.tr.Read(context.Background(), "room")
	if len(s.Members) != 1 || s.Members[0].ID != "shared" || s.Members[0].Connections != 1 {
		t.Fatalf("after the reap: %+v", s)
	}
	testsupport.Eventually(t, "the lost node's keys gone", 5*time.Second, func() bool {
		return rdb.Exists(context.Background(), "t:~{nodeA}:presence").Val() == 0 &&
			!rdb.SIsMember(context.Background(), "t:~presence:nodes", "nodeA").Val()
	})
}

// A lost node's ids leave leave_delay after its lease lapsed, as its own
// drops would: a device that reconnects to another node meanwhile never
// leaves (a rolling restart).
func TestRedisLostNodeWaitsLeaveDelay(t *testing.T) {
	rdb := testsupport.StartRedis(t).Client(t)
	a := startNodeWith(t, rdb, "nodeA", time.Hour, time.Second)
	b := startNodeWith(t, rdb, "nodeB", time.Hour, time.Second)
	a.tr.Join("ca", "room", "dev", nil)
	a.tr.Join("ca2", "room", "gone", nil)
	a.rec.want(t, "join room dev", "join room gone")
	a.kill()
	b.tr.Join("cb", "room", "dev", nil) // reconnected to B
	synced(t, b.tr)
	b.rec.want(t, "leave room gone")
	testsupport.Eventually(t, "node A reaped", 5*time.Second, func() bool {
		return rdb.Exists(context.Background(), "t:~{nodeA}:presence").Val() == 0
	})
	if got := b.rec.list(); len(got) != 1 {
		t.Fatalf("node B heard %q", got)
	}
}

func TestRedisRestartRewritesQuietly(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := startNode(t, rdb, "nodeA", time.Hour)
	a.tr.Join("ca", "room", "u1", nil)
	a.rec.want(t, "join room u1")
	srv.Kill()
	srv.Start()
	testsupport.Eventually(t, "presence written again", 10*time.Second, func() bool {
		s, err := a.tr.Read(context.Background(), "room")
		return err == nil && len(s.Members) == 1
	})
	if got := a.rec.list(); len(got) != 1 {
		t.Fatalf("a Redis restart made events %q", got)
	}
	// And what is decided after it still is.
	a.tr.Leave("ca", "room")
	a.rec.want(t, "join room u1", "leave room u1")
}

func TestPosterOrderAcrossNodes(t *testing.T) {
	rdb := testsupport.StartRedis(t).Client(t)
	a := startNode(t, rdb, "nodeA", time.Hour)
	b := startNode(t, rdb, "nodeB", time.Hour)
	// A decides the join, B the leave: B's leave waits for A's join.
	a.tr.Join("ca", "room", "u1", nil)
	synced(t, a.tr)
	b.tr.Join("cb", "room", "u1", nil)
	synced(t, b.tr)
	a.tr.Leave("ca", "room")
	synced(t, a.tr)
	b.tr.Leave("cb", "room")
	synced(t, b.tr)
	got := make(chan string, 10)
	fail := 3
	postB := NewPoster(func(ctx context.Context, body []byte) (int, error) {
		got <- "b " + string(body)
		return 200, nil
	}, b.store, zerolog.Nop())
	postA := NewPoster(func(ctx context.Context, body []byte) (int, error) {
		if fail > 0 {
			fail--
			return 500, nil
		}
		got <- "a " + string(body)
		return 200, nil
	}, a.store, zerolog.Nop())
	for _, p := range []*Poster{postA, postB} {
		p.backoffBase, p.wait = 10*time.Millisecond, 10*time.Millisecond
		go p.Run()
		t.Cleanup(p.Close)
	}
	postB.Add(b.rec.evs...)
	postA.Add(a.rec.evs...)
	first, second := <-got, <-got
	var ev struct {
		Events []Event `json:"events"`
	}
	for i, s := range []string{first, second} {
		if err := json.Unmarshal([]byte(s[2:]), &ev); err != nil || len(ev.Events) != 1 {
			t.Fatalf("body %q: %v", s, err)
		}
		want := []string{"a join", "b leave"}[i]
		if got := s[:1] + " " + ev.Events[0].Type; got != want {
			t.Fatalf("post %d is %q, want %q (%s)", i, got, want, s)
		}
	}
	testsupport.Eventually(t, "the outbox empty", 5*time.Second, func() bool {
		all := rdb.HGetAll(context.Background(), "t:~presence:{room}").Val()
		return len(all) == 0
	})
}
