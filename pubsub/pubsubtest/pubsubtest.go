// Package pubsubtest is the contract every pubsub.Broker must meet, written
// once and run by each implementation's own tests (Memory now, Redis later),
// so that the hub can rely on one behaviour whichever broker is configured.
//
// The contract assumes delivery may be asynchronous and remote: it waits
// for what it expects with a deadline and never sleeps a fixed time. To show
// that something was not delivered it publishes a marker to a subscribed
// control channel and waits for that instead, which relies on one more
// promise a broker must keep: messages from one publisher reach a node in
// the order they were published, across channels too.
package pubsubtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// waitTimeout bounds each wait for a delivery; generous, because under
// -race and against a real server a slow run is not a wrong one.
const waitTimeout = 10 * time.Second

// testTimeout bounds the context of a whole subtest's broker calls.
const testTimeout = time.Minute

// Run checks that the brokers newBroker returns keep the pubsub.Broker
// contract. newBroker is called once per subtest and returns a broker that
// is not started yet; Run starts it with its own Sink and closes it.
// newBroker may register its own t.Cleanup.
//
// Channel names are unique to the run, so brokers sharing one server (a
// Redis used by parallel packages) do not see each other's traffic.
//
// newBroker is given the node id the broker serves: the connection ids
// given to Direct are made with pubsub.NewConnectionID, for connections on
// this node (the Sink's Execute reports true) or on a node that does not
// exist.
func Run(t *testing.T, newBroker func(t *testing.T, node string) pubsub.Broker, opts ...Option) {
	t.Helper()
	tests := []struct {
		name string
		run  func(t *testing.T, e *env)
	}{
		{"Ready", testReady},
		{"DeliversOnceVerbatim", testDeliversOnce},
		{"NotSubscribed", testNotSubscribed},
		{"NotCounted", testNotCounted},
		{"ManyChannels", testManyChannels},
		{"Order", testOrder},
		{"Batch", testBatch},
		{"InvalidChannel", testInvalidChannel},
		{"Direct", testDirect},
		{"Concurrent", testConcurrent},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t, newBroker)
			for _, o := range opts {
				o(e)
			}
			tt.run(t, e)
		})
	}
}

// Option adjusts what Run expects of a broker.
type Option func(*env)

// Sharded is for brokers whose channels live on different servers (Redis
// Cluster's sharded pub/sub): one publisher's order is kept per channel,
// not across channels. The barriers used to show that something was not
// delivered then prove less, never more.
func Sharded(e *env) { e.sharded = true }

// env is one subtest's broker, its sink, and the names it may use.
type env struct {
	b       pubsub.Broker
	r       *recorder
	ctx     context.Context
	prefix  string // of every channel of this subtest
	node    string // the broker's node id
	sharded bool   // order is kept per channel only
	control string // a channel subscribed throughout, for barriers
	marks   int
}

func setup(t *testing.T, newBroker func(t *testing.T, node string) pubsub.Broker) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	node := pubsub.NewNodeID()
	e := &env{b: newBroker(t, node), r: newRecorder(), ctx: ctx, prefix: uniquePrefix(t), node: node}
	if err := e.b.Start(ctx, e.r); err != nil {
		t.Fatalf("Start: %v", err)
	}
	// Close's error is not judged here: testClose has closed some brokers
	// already, and closing twice need only be harmless.
	t.Cleanup(func() { _ = e.b.Close() })
	e.control = e.channel("control")
	e.subscribe(t, e.control)
	return e
}

// uniquePrefix gives names that cannot collide with another run's or
// another subtest's: a random part, then the test's name made valid.
func uniquePrefix(t *testing.T) string {
	name := []byte(t.Name())
	if len(name) > 100 {
		name = name[len(name)-100:]
	}
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_-:.@/=+", c) >= 0) {
			name[i] = '_'
		}
	}
	return "pubsubtest:" + rand.Text() + ":" + string(name) + ":"
}

func (e *env) channel(name string) string { return e.prefix + name }

func (e *env) subscribe(t *testing.T, channels ...string) {
	t.Helper()
	if err := e.b.Subscribe(e.ctx, channels...); err != nil {
		t.Fatalf("Subscribe(%q): %v", channels, err)
	}
}

func (e *env) unsubscribe(t *testing.T, channels ...string) {
	t.Helper()
	if err := e.b.Unsubscribe(e.ctx, channels...); err != nil {
		t.Fatalf("Unsubscribe(%q): %v", channels, err)
	}
}

func (e *env) publish(t *testing.T, msgs ...pubsub.Message) {
	t.Helper()
	if err := e.b.Publish(e.ctx, msgs...); err != nil {
		t.Fatalf("Publish(%d messages): %v", len(msgs), err)
	}
}

// text is a text message; most subtests need nothing more.
func text(channel, data string) pubsub.Message {
	return pubsub.Message{Channel: channel, Data: []byte(data)}
}

// barrier returns once everything published before it has been delivered:
// its marker, published after, arrives after them.
func (e *env) barrier(t *testing.T) {
	t.Helper()
	e.marks++
	mark := "mark-" + strconv.Itoa(e.marks)
	e.publish(t, text(e.control, mark))
	e.r.wait(t, "the barrier "+mark, func(s *snapshot) bool {
		for _, m := range s.msgs {
			if m.Channel == e.control && string(m.Data) == mark {
				return true
			}
		}
		return false
	})
}

// waitCount waits until at least n messages have arrived on channel and
// returns them all.
func (e *env) waitCount(t *testing.T, channel string, n int) []pubsub.Message {
	t.Helper()
	e.r.wait(t, fmt.Sprintf("%d messages on %q", n, channel), func(s *snapshot) bool {
		return len(s.on(channel)) >= n
	})
	return e.r.on(channel)
}

func assertMessages(t *testing.T, got, want []pubsub.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d messages, want %d:\n got: %s\nwant: %s", len(got), len(want), describe(got), describe(want))
		return
	}
	for i := range want {
		if !messageEqual(got[i], want[i]) {
			t.Errorf("message %d:\n got: %s\nwant: %s", i, describe(got[i:i+1]), describe(want[i:i+1]))
		}
	}
}

// messageEqual compares byte for byte; nil and empty data are the same
// message, as a network cannot tell them apart.
func messageEqual(a, b pubsub.Message) bool {
	return a.Channel == b.Channel && bytes.Equal(a.Data, b.Data) && a.Binary == b.Binary && a.Except == b.Except &&
		(a.Close == nil) == (b.Close == nil) && (a.Close == nil || *a.Close == *b.Close)
}

func commandEqual(a, b pubsub.Command) bool {
	return a.Kind == b.Kind && a.Connection == b.Connection && bytes.Equal(a.Data, b.Data) &&
		a.Binary == b.Binary && a.Code == b.Code && a.Reason == b.Reason
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// describe keeps failure output readable when a message is 256 KiB long.
func describe(msgs []pubsub.Message) string {
	var b strings.Builder
	for i, m := range msgs {
		if i > 0 {
			b.WriteString(", ")
		}
		d := m.Data
		if len(d) > 40 {
			d = d[:40]
		}
		fmt.Fprintf(&b, "{%q %q (%d bytes) binary=%v except=%q", m.Channel, d, len(m.Data), m.Binary, m.Except)
		if m.Close != nil {
			fmt.Fprintf(&b, " close=%+v", *m.Close)
		}
		b.WriteString("}")
	}
	return "[" + b.String() + "]"
}

// recorder is the Sink of the contract: it keeps what arrives and lets the
// test goroutine wait for it.
type recorder struct {
	mu      sync.Mutex
	msgs    []pubsub.Message
	cmds    []pubsub.Command
	here    map[string]bool // connection ids on this node
	changed chan struct{}   // holds a token once something arrived since the last look
}

var _ pubsub.Sink = (*recorder)(nil)

func newRecorder() *recorder {
	return &recorder{changed: make(chan struct{}, 1), here: map[string]bool{}}
}

func (r *recorder) Deliver(m pubsub.Message) {
	// Copied because a broker may reuse its buffer once Deliver returns.
	m.Data = bytes.Clone(m.Data)
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	r.notify()
}

func (r *recorder) Execute(c pubsub.Command) bool {
	c.Data = bytes.Clone(c.Data)
	r.mu.Lock()
	r.cmds = append(r.cmds, c)
	here := r.here[c.Connection]
	r.mu.Unlock()
	r.notify()
	return here
}

// here makes the id of a connection on the broker's node.
func (e *env) here() string {
	id := pubsub.NewConnectionID(e.node)
	e.r.mu.Lock()
	e.r.here[id] = true
	e.r.mu.Unlock()
	return id
}

// notify never blocks the broker: one pending token is enough to make the
// waiter look again, and it looks at everything.
func (r *recorder) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// snapshot is what had arrived at one moment.
type snapshot struct {
	msgs []pubsub.Message
	cmds []pubsub.Command
}

func (r *recorder) snapshot() *snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &snapshot{msgs: append([]pubsub.Message(nil), r.msgs...), cmds: append([]pubsub.Command(nil), r.cmds...)}
}

func (s *snapshot) on(channel string) []pubsub.Message {
	var out []pubsub.Message
	for _, m := range s.msgs {
		if m.Channel == channel {
			out = append(out, m)
		}
	}
	return out
}

// mine is the commands to connections on this node.
func (s *snapshot) mine(r *recorder) []pubsub.Command {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []pubsub.Command
	for _, c := range s.cmds {
		if r.here[c.Connection] {
			out = append(out, c)
		}
	}
	return out
}

func (r *recorder) on(channel string) []pubsub.Message { return r.snapshot().on(channel) }

// wait returns once cond holds for what has arrived, or fails the test
// after waitTimeout. Only the test's own goroutine may call it.
func (r *recorder) wait(t *testing.T, what string, cond func(*snapshot) bool) {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		s := r.snapshot()
		if cond(s) {
			return
		}
		select {
		case <-r.changed:
		case <-timer.C:
			t.Fatalf("waited %v for %s; %d messages and %d commands arrived", waitTimeout, what, len(s.msgs), len(s.cmds))
		}
	}
}
