package sidecar

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/session"
)

// holding is a sink that holds the connections in here.
type holding struct {
	mu   sync.Mutex
	here map[string]bool
	got  []pubsub.Command
}

func (h *holding) Deliver(pubsub.Message) {}

func (h *holding) Execute(c pubsub.Command) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.here[c.Connection] {
		h.got = append(h.got, c)
	}
	return h.here[c.Connection]
}

func (h *holding) executed() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.got)
}

// The broker finds a restored session's connection where the session
// store says it lives, and a held one nowhere.
func TestLocateSessions(t *testing.T) {
	rs := testsupport.StartRedis(t)
	ctx := context.Background()
	nodeA, nodeB := pubsub.NewNodeID(), pubsub.NewNodeID()
	start := func(node string, sink pubsub.Sink) *pubsub.Redis {
		b, err := pubsub.NewRedis(pubsub.RedisConfig{URL: rs.URL(), Prefix: "cc:", Node: node}, zerolog.Nop(), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		store := session.NewRedis(b.Client(), "cc:", node, time.Minute, zerolog.Nop())
		locateSessions(b, store)
		if err := b.Start(ctx, sink); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	a := start(nodeA, &holding{})
	onB := &holding{here: map[string]bool{}}
	start(nodeB, onB)

	// A session of an id made on A, restored on B (B's store wrote it).
	storeB := session.NewRedis(rs.Client(t), "cc:", nodeB, time.Minute, zerolog.Nop())
	moved, held := pubsub.NewConnectionID(nodeA), pubsub.NewConnectionID(nodeA)
	onB.mu.Lock()
	onB.here[moved] = true
	onB.mu.Unlock()
	storeB.Save(session.NewSID(), func() *session.Session { return &session.Session{ConnID: moved, Node: nodeB, Path: "/cable"} })
	storeB.Hold(session.NewSID(), func() *session.Session {
		return &session.Session{ConnID: held, Node: nodeB, Path: "/cable", Close: &session.Close{N: 1, Code: 1006, By: "client",
			Due: time.Now().Add(time.Minute).UnixMilli()}}
	}, nil)
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := storeB.Flush(fctx); err != nil {
		t.Fatal(err)
	}

	if err := a.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: moved, Data: []byte("hi")}); err != nil {
		t.Fatalf("Direct to the restored connection: %v", err)
	}
	testsupport.Eventually(t, "the send on B", 10*time.Second, func() bool { return onB.executed() == 1 })
	if err := a.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: held, Data: []byte("hi")}); !errors.Is(err, pubsub.ErrNoConnection) {
		t.Fatalf("Direct to a held session's connection: %v, want ErrNoConnection", err)
	}
}
