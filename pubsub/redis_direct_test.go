package pubsub_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/cablecar/cablecar/pubsub"
)

// whereabouts is a locator for the tests: connection id → the node that
// holds it now, and how often each node asked.
type whereabouts struct {
	mu    sync.Mutex
	at    map[string]string
	calls map[string]int
}

var errLocator = errors.New("the store is away")

func (w *whereabouts) set(id, node string) {
	w.mu.Lock()
	w.at[id] = node
	w.mu.Unlock()
}

func (w *whereabouts) asked(node string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls[node]
}

func (w *whereabouts) locator(asker string) pubsub.Locator {
	return func(_ context.Context, id string) (string, bool, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.calls[asker]++
		node, ok := w.at[id]
		if node == "fail" {
			return "", false, errLocator
		}
		return node, ok, nil
	}
}

func startLocatingBroker(t *testing.T, url, node string, w *whereabouts) (*pubsub.Redis, *recSink) {
	t.Helper()
	b := newRedisBroker(t, url, node)
	b.Locate(w.locator(node))
	s := &recSink{here: map[string]bool{}}
	if err := b.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, s
}

// hold makes s the sink of a node that holds id.
func (s *recSink) hold(id string) {
	s.mu.Lock()
	s.here[id] = true
	s.mu.Unlock()
}

// executed is the commands s carried out (not those it missed).
func (s *recSink) executed() []pubsub.Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []pubsub.Command
	for _, c := range s.cmds {
		if s.here[c.Connection] {
			out = append(out, c)
		}
	}
	return out
}

// A connection restored on a node other than the one its id names is
// reached there (SPEC §4, §10): from any node, while the id's node lives
// and after it is gone; a connection that is nowhere is ErrNoConnection.
func TestRedisDirectReachesRestoredConnection(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		testDirectRestored(t, startRedisServer(t).URL())
	})
	t.Run("cluster", func(t *testing.T) {
		if testing.Short() {
			t.Skip("starts a 3-node Redis Cluster")
		}
		testDirectRestored(t, startRedisCluster(t).URL())
	})
}

func testDirectRestored(t *testing.T, url string) {
	ctx := context.Background()
	w := &whereabouts{at: map[string]string{}, calls: map[string]int{}}
	nodeA, nodeB, nodeC := pubsub.NewNodeID(), pubsub.NewNodeID(), pubsub.NewNodeID()
	a, _ := startLocatingBroker(t, url, nodeA, w)
	b, onB := startLocatingBroker(t, url, nodeB, w)
	c, onC := startLocatingBroker(t, url, nodeC, w)

	// Made on A, restored on B.
	moved := pubsub.NewConnectionID(nodeA)
	onB.hold(moved)
	w.set(moved, nodeB)
	want := []pubsub.Command{
		// From C: A takes it, misses, and sends it on.
		{Kind: pubsub.CommandSend, Connection: moved, Data: []byte(`{"k":1}`), Identifier: `{"channel":"Chat"}`},
		// From A, the id's own node: sent on at once.
		{Kind: pubsub.CommandClose, Connection: moved, Code: 4001, Reason: "bye ✓", NoReconnect: true},
		// From B, which holds it: no Redis.
		{Kind: pubsub.CommandSend, Connection: moved, Data: []byte{0, 0xff}, Binary: true},
	}
	for i, from := range []*pubsub.Redis{c, a, b} {
		if err := from.Direct(ctx, want[i]); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		waitUntil(t, "the command on B", func() bool { return len(onB.executed()) == i+1 })
	}
	for i, got := range onB.executed() {
		if wc := want[i]; got.Kind != wc.Kind || string(got.Data) != string(wc.Data) || got.Binary != wc.Binary || got.Identifier != wc.Identifier ||
			got.Code != wc.Code || got.Reason != wc.Reason || got.NoReconnect != wc.NoReconnect {
			t.Errorf("command %d executed as %+v, want %+v", i, got, wc)
		}
	}

	// A command is sent on once at most: B, told by a stale locator that
	// it holds a connection of A's that it does not, drops it rather than
	// asking again. The marker after it, on the same channels, shows B
	// has seen it.
	stale := pubsub.NewConnectionID(nodeA)
	w.set(stale, nodeB)
	if err := c.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: stale, Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := c.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: moved, Data: []byte("marker")}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the marker on B", func() bool { return len(onB.executed()) == len(want)+1 })
	if n := w.asked(nodeB); n != 0 {
		t.Fatalf("B asked the locator %d times about commands sent on to it; want 0", n)
	}

	// A is gone: no node listens on its channel, and the locator says
	// where its connections live now.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: moved, Data: []byte("after A")}); err != nil {
		t.Fatalf("Direct after A is gone: %v", err)
	}
	waitUntil(t, "the command after A is gone on B", func() bool { return len(onB.executed()) == len(want)+2 })
	toC := pubsub.NewConnectionID(nodeA)
	onC.hold(toC)
	w.set(toC, nodeC)
	if err := b.Direct(ctx, pubsub.Command{Kind: pubsub.CommandClose, Connection: toC, Code: 4002}); err != nil {
		t.Fatalf("Direct to a connection restored on C: %v", err)
	}
	waitUntil(t, "the close on C", func() bool { return len(onC.executed()) == 1 })

	// Nowhere: never restored, located on its gone node, on a node that
	// does not hold it, or on a node that never was.
	for what, node := range map[string]string{"unknown": "", "on its gone node": nodeA, "not on the named node": nodeC, "on no node": pubsub.NewNodeID()} {
		id := pubsub.NewConnectionID(nodeA)
		if node != "" {
			w.set(id, node)
		}
		if err := c.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: id, Data: []byte("x")}); !errors.Is(err, pubsub.ErrNoConnection) {
			t.Errorf("Direct to a connection %s: %v, want ErrNoConnection", what, err)
		}
	}
	// A locator that cannot answer is an error, not "nowhere".
	failing := pubsub.NewConnectionID(nodeA)
	w.set(failing, "fail")
	if err := c.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: failing, Data: []byte("x")}); err == nil || errors.Is(err, pubsub.ErrNoConnection) {
		t.Errorf("Direct with a failing locator: %v, want its error", err)
	}
}
