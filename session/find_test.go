package session

import (
	"context"
	"testing"
)

// Find names the node that restored a session from the moment of the
// restore, before that node's first write of it lands: admin /send and
// /close are routed by it (pubsub/redis_direct.go).
func TestRedisFindNamesTheRestoringNode(t *testing.T) {
	a, b := newRedisPair(t)
	ctx := context.Background()
	sid := NewSID()
	a.Save(sid, live("c_moved", ""))
	flush(t, a)
	if s, detached, err := b.Find(ctx, "c_moved"); err != nil || s == nil || detached || s.Node != "nodeA" {
		t.Fatalf("Find before the restore = %+v, %v, %v; want live on nodeA", s, detached, err)
	}
	if s, err := b.Take(ctx, sid, ""); err != nil || s == nil {
		t.Fatalf("Take = %v, %v", s, err)
	}
	// Nothing of nodeB's is written yet: the restore itself says where.
	s, detached, err := a.Find(ctx, "c_moved")
	if err != nil || s == nil || detached || s.Node != "nodeB" {
		t.Fatalf("Find after the restore = %+v, %v, %v; want live on nodeB", s, detached, err)
	}
	// nodeB's own write, and a later restore on nodeA again, agree.
	next := NewSID()
	restored := live("c_moved", "")()
	restored.Node = "nodeB"
	b.Save(next, func() *Session { return restored })
	flush(t, b)
	if s, _, _ := a.Find(ctx, "c_moved"); s == nil || s.Node != "nodeB" {
		t.Fatalf("Find after nodeB wrote it = %+v", s)
	}
	if s, err := a.Take(ctx, next, ""); err != nil || s == nil {
		t.Fatalf("Take on nodeA = %v, %v", s, err)
	}
	if s, _, _ := b.Find(ctx, "c_moved"); s == nil || s.Node != "nodeA" {
		t.Fatalf("Find after the restore on nodeA = %+v", s)
	}
}

// Save and Hold may come while a flush writes the same session (the race
// detector checks what the flush reads of it).
func TestRedisSaveDuringFlush(t *testing.T) {
	a, _ := newRedisPair(t)
	sid := NewSID()
	a.Save(sid, live("c_busy", ""))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			a.Save(sid, live("c_busy", ""))
		}
		a.Hold(sid, held("c_busy", 4, "client", testTTL), nil)
	}()
	for {
		flush(t, a)
		select {
		case <-done:
			flush(t, a)
			if s, detached, err := a.Find(context.Background(), "c_busy"); err != nil || s == nil || !detached {
				t.Fatalf("Find after the hold = %+v, %v, %v; want held", s, detached, err)
			}
			return
		default:
		}
	}
}
