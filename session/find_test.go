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
