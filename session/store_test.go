package session

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// The same behaviour is asked of both stores; the Redis one is also asked
// what outlives its node.

const testTTL = 300 * time.Millisecond

var eventually = testsupport.Eventually

func live(id, sub string) Snapshot {
	s := &Session{ConnID: id, Node: "nodeA", Sub: sub, Seq: Reserved(3), Path: "/cable",
		Subs: []Sub{{ID: `{"channel":"Chat"}`, Streams: []string{"chat_1"}, State: "st", HasState: true}}}
	return func() *Session { return s }
}

func held(id string, n uint64, by string, ttl time.Duration) Snapshot {
	s := live(id, "")()
	c := *s
	c.Seq = n - 1
	c.Close = &Close{N: n, Code: 1006, By: by, Due: time.Now().Add(ttl).UnixMilli()}
	return func() *Session { return &c }
}

// posts records what a store's Run posts.
type posts struct {
	mu  sync.Mutex
	got []Session
}

func (p *posts) post(s *Session, settled func()) {
	p.mu.Lock()
	p.got = append(p.got, *s)
	p.mu.Unlock()
	settled()
}

func (p *posts) list() []Session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Session{}, p.got...)
}

func runStore(t *testing.T, st Store, p *posts) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Run(ctx, p.post)
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func flush(t *testing.T, st Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := st.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func newRedisPair(t *testing.T) (a, b *Redis) {
	rs := testsupport.StartRedis(t)
	rdb := rs.Client(t)
	log := zerolog.New(zerolog.NewTestWriter(t))
	return NewRedis(rdb, "cc:", "nodeA", testTTL, log), NewRedis(rdb, "cc:", "nodeB", testTTL, log)
}

func stores(t *testing.T) map[string][2]Store {
	a, b := newRedisPair(t)
	m := NewMemory(testTTL)
	return map[string][2]Store{"memory": {m, m}, "redis": {a, b}}
}

func TestTakeRestoresOnceAndOnlyWithItsSub(t *testing.T) {
	for name, pair := range stores(t) {
		t.Run(name, func(t *testing.T) {
			a, b := pair[0], pair[1]
			ctx := context.Background()
			sid := NewSID()
			a.Save(sid, live("c_1", "user-1"))
			flush(t, a)
			if s, err := b.Take(ctx, sid, "user-2"); !errors.Is(err, ErrOtherSub) || s != nil {
				t.Fatalf("another sub: got %v, %v; want ErrOtherSub", s, err)
			}
			s, err := b.Take(ctx, sid, "user-1")
			if err != nil || s == nil {
				t.Fatalf("Take = %v, %v; want the session", s, err)
			}
			if s.ConnID != "c_1" || s.Seq != Reserved(3) || len(s.Subs) != 1 || s.Subs[0].Streams[0] != "chat_1" || s.Subs[0].State != "st" {
				t.Fatalf("restored %+v", s)
			}
			if s, err := b.Take(ctx, sid, "user-1"); err != nil || s != nil {
				t.Fatalf("second Take = %v, %v; want none: a sid restores once", s, err)
			}
			if s, err := a.Take(ctx, NewSID(), ""); err != nil || s != nil {
				t.Fatalf("unknown sid: %v, %v", s, err)
			}
		})
	}
}

func TestHeldCloseIsPostedWhenDueUnlessRestored(t *testing.T) {
	for name, pair := range stores(t) {
		t.Run(name, func(t *testing.T) {
			a, b := pair[0], pair[1]
			var p posts
			runStore(t, a, &p)
			if b != a {
				runStore(t, b, &p)
			}
			lapsed, restored := NewSID(), NewSID()
			a.Save(lapsed, live("c_lapse", ""))
			a.Save(restored, live("c_back", ""))
			a.Hold(lapsed, held("c_lapse", 7, "client", testTTL), nil)
			a.Hold(restored, held("c_back", 9, "timeout", testTTL), nil)
			flush(t, a)
			if s, det, err := b.Find(context.Background(), "c_lapse"); err != nil || s == nil || !det {
				t.Fatalf("Find(held) = %v, %v, %v; want detached", s, det, err)
			}
			s, err := b.Take(context.Background(), restored, "")
			if err != nil || s == nil || s.Close == nil || s.Close.N != 9 {
				t.Fatalf("restore of a held session: %+v, %v", s, err)
			}
			eventually(t, "the lapsed session's close posted", 5*time.Second, func() bool { return len(p.list()) == 1 })
			got := p.list()[0]
			if got.ConnID != "c_lapse" || got.Close.N != 7 || got.Close.By != "client" {
				t.Fatalf("posted %+v", got)
			}
			if s, err := b.Take(context.Background(), lapsed, ""); err != nil || s != nil {
				t.Fatalf("a posted session was restored: %v %v", s, err)
			}
			// Nothing is left held: the restored one will never be posted,
			// nor the other again.
			eventually(t, "nothing held", 5*time.Second, func() bool { return heldCount(t, b) == 0 })
			if n := len(p.list()); n != 1 {
				t.Fatalf("%d closes posted; want 1", n)
			}
		})
	}
}

func TestDropForgets(t *testing.T) {
	for name, pair := range stores(t) {
		t.Run(name, func(t *testing.T) {
			a := pair[0]
			sid := NewSID()
			a.Save(sid, live("c_d", ""))
			flush(t, a)
			a.Drop(sid)
			flush(t, a)
			if s, err := a.Take(context.Background(), sid, ""); err != nil || s != nil {
				t.Fatalf("dropped session restored: %v %v", s, err)
			}
		})
	}
}

// A hold of a session that another node restored meanwhile holds nothing:
// the connection goes on there.
func TestRedisHoldAfterRestoreElsewhereHoldsNothing(t *testing.T) {
	a, b := newRedisPair(t)
	var p posts
	runStore(t, b, &p)
	sid := NewSID()
	a.Save(sid, live("c_x", ""))
	flush(t, a)
	if s, _ := b.Take(context.Background(), sid, ""); s == nil {
		t.Fatal("not restored")
	}
	wrote := make(chan struct{})
	a.Hold(sid, held("c_x", 5, "timeout", 0), func() { close(wrote) })
	flush(t, a)
	<-wrote
	if n := heldCount(t, b); n != 0 {
		t.Fatalf("%d held after a hold of a session restored elsewhere", n)
	}
	if n := len(p.list()); n != 0 {
		t.Fatalf("%d closes posted for a session restored elsewhere", n)
	}
}

// A killed node's live session: the reaper's Lost holds its close, which
// a survivor posts when due, with by node_lost — unless restored first.
func TestRedisLostNodeSessions(t *testing.T) {
	a, b := newRedisPair(t)
	var p posts
	stopA := runStore(t, a, &p)
	runStore(t, b, &p)
	lost, back := NewSID(), NewSID()
	a.Save(lost, live("c_lost", ""))
	a.Save(back, live("c_back", ""))
	flush(t, a)
	stopA() // kill -9

	// The client of c_back comes back on B before the reaper looks.
	if s, _ := b.Take(context.Background(), back, ""); s == nil {
		t.Fatal("not restored")
	}
	b.Save(NewSID(), func() *Session { s := *live("c_back", "")(); s.Node = "nodeB"; return &s })
	flush(t, b)

	ctx := context.Background()
	lc := Close{N: 1<<53 - 1, Code: 1006, By: "node_lost"}
	if h, on, err := b.Lost(ctx, "c_back", "nodeA", lc); err != nil || h || !on {
		t.Fatalf("Lost(restored) = %v %v %v; want goes on", h, on, err)
	}
	if h, on, err := b.Lost(ctx, "c_none", "nodeA", lc); err != nil || h || on {
		t.Fatalf("Lost(no session) = %v %v %v; want neither", h, on, err)
	}
	if h, _, err := b.Lost(ctx, "c_lost", "nodeA", lc); err != nil || !h {
		t.Fatalf("Lost = %v %v; want held", h, err)
	}
	eventually(t, "the lost session's close posted", 5*time.Second, func() bool { return len(p.list()) == 1 })
	if got := p.list()[0]; got.ConnID != "c_lost" || got.Close.By != "node_lost" || got.Close.N != 1<<53-1 {
		t.Fatalf("posted %+v", got)
	}
}

func TestSIDAndHash(t *testing.T) {
	a, b := NewSID(), NewSID()
	if a == b || len(a) < 22 {
		t.Fatalf("sids %q %q: want distinct, ≥128 bits", a, b)
	}
	if Hash(a) == a || Hash(a) != Hash(a) {
		t.Fatal("Hash must be stable and not the sid")
	}
}

// heldCount is how many closes st holds.
func heldCount(t *testing.T, st Store) int {
	switch st := st.(type) {
	case *Memory:
		st.mu.Lock()
		defer st.mu.Unlock()
		n := 0
		for _, e := range st.entries {
			if e.held != nil {
				n++
			}
		}
		return n
	case *Redis:
		n, err := st.rdb.ZCard(context.Background(), st.heldKey()).Result()
		if err != nil {
			t.Fatal(err)
		}
		return int(n)
	}
	return 0
}

// Find while the store marks a due close for posting (admin GET
// /connections/<id> during a lapse): under -race this failed before Find
// read the entry under the store's lock.
func TestMemoryFindWhileDue(t *testing.T) {
	m := NewMemory(testTTL)
	sid := NewSID()
	m.Save(sid, live("c_due", ""))
	m.Hold(sid, held("c_due", 4, "client", -time.Second), nil)
	done, going := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			if i == 10 {
				close(going)
			}
			m.Find(context.Background(), "c_due")
		}
	}()
	<-going
	if got := m.due(nowMs()); len(got) != 1 || got[0].ConnID != "c_due" {
		t.Errorf("due = %v, want c_due", got)
	}
	<-done
	if s, _, _ := m.Find(context.Background(), "c_due"); s != nil {
		t.Errorf("Find of a close being posted = %v, want nothing", s)
	}
}
