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
	"errors"
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

func testReady(t *testing.T, e *env) {
	// A networked broker may still be connecting after Start, but not for
	// long: Subscribe has already succeeded in setup.
	var err error
	deadline := time.Now().Add(waitTimeout)
	for err = e.b.Ready(e.ctx); err != nil && time.Now().Before(deadline); err = e.b.Ready(e.ctx) {
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Ready after Start and Subscribe: %v", err)
	}
}

func testDeliversOnce(t *testing.T, e *env) {
	ch := e.channel("room")
	e.subscribe(t, ch)
	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	// Large enough to cross any buffer a networked broker reads through.
	big := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), 256<<10/18)
	want := []pubsub.Message{
		text(ch, "hello, world"),
		{Channel: ch, Data: every, Binary: true},
		{Channel: ch, Data: []byte("héllo ✓ \"quoted\" \n"), Except: e.prefix + "conn-1"},
		{Channel: ch, Data: []byte{}},
		{Channel: ch, Data: big, Binary: true, Except: "x"},
	}
	for _, m := range want {
		e.publish(t, m)
	}
	e.waitCount(t, ch, len(want))
	e.barrier(t) // so that a duplicate still in flight is counted too
	assertMessages(t, e.r.on(ch), want)
}

func testNotSubscribed(t *testing.T, e *env) {
	never, left := e.channel("never"), e.channel("left")
	e.subscribe(t, left)
	e.unsubscribe(t, left)
	e.publish(t, text(never, "to nobody"))
	e.publish(t, text(left, "to nobody either"))
	e.barrier(t)
	assertMessages(t, e.r.on(never), nil)
	assertMessages(t, e.r.on(left), nil)
}

// A broker does not count subscriptions (the hub does): a second
// Subscribe changes nothing, one Unsubscribe ends it, and unsubscribing
// what is not subscribed is no error and leaves nothing behind.
func testNotCounted(t *testing.T, e *env) {
	ch := e.channel("shared")
	e.subscribe(t, ch)
	e.subscribe(t, ch)
	e.publish(t, text(ch, "subscribed twice"))
	e.waitCount(t, ch, 1)

	e.unsubscribe(t, ch)
	e.publish(t, text(ch, "unsubscribed once"))
	e.barrier(t)
	assertMessages(t, e.r.on(ch), []pubsub.Message{text(ch, "subscribed twice")})

	e.unsubscribe(t, ch)
	e.unsubscribe(t, e.channel("never-subscribed"))
	e.unsubscribe(t)
	e.subscribe(t)
	e.subscribe(t, ch)
	e.publish(t, text(ch, "subscribed again"))
	e.waitCount(t, ch, 2)
	e.barrier(t)
	assertMessages(t, e.r.on(ch), []pubsub.Message{text(ch, "subscribed twice"), text(ch, "subscribed again")})
}

// One call takes many channels (an accept's): every one is in effect when
// Subscribe returns, and one Unsubscribe ends some while the rest stay.
func testManyChannels(t *testing.T, e *env) {
	const n = 40
	chans := make([]string, n)
	for i := range chans {
		chans[i] = e.channel("many-" + strconv.Itoa(i))
	}
	e.subscribe(t, chans...)
	for _, ch := range chans {
		e.publish(t, text(ch, "right after"))
	}
	for _, ch := range chans {
		e.waitCount(t, ch, 1)
	}
	e.unsubscribe(t, chans[:n/2]...)
	for _, ch := range chans {
		e.publish(t, text(ch, "after half left"))
	}
	for _, ch := range chans[n/2:] {
		e.waitCount(t, ch, 2)
	}
	e.barrier(t)
	for i, ch := range chans {
		want := []pubsub.Message{text(ch, "right after")}
		if i >= n/2 {
			want = append(want, text(ch, "after half left"))
		}
		assertMessages(t, e.r.on(ch), want)
	}
}

func testOrder(t *testing.T, e *env) {
	const n = 500
	ch := e.channel("ordered")
	e.subscribe(t, ch)
	want := make([]pubsub.Message, n)
	for i := range want {
		want[i] = text(ch, strconv.Itoa(i))
		e.publish(t, want[i])
	}
	e.waitCount(t, ch, n)
	e.barrier(t)
	assertMessages(t, e.r.on(ch), want)
}

func testBatch(t *testing.T, e *env) {
	a, b, none := e.channel("a"), e.channel("b"), e.channel("none")
	e.subscribe(t, a)
	e.subscribe(t, b)
	batch := []pubsub.Message{
		text(a, "a0"), text(b, "b0"), text(none, "x"), text(a, "a1"),
		{Channel: b, Data: []byte{0, 1}, Binary: true, Except: "c"}, text(a, "a2"),
	}
	e.publish(t, batch...)
	e.waitCount(t, a, 3)
	e.waitCount(t, b, 2)
	e.barrier(t)
	assertMessages(t, e.r.on(a), []pubsub.Message{batch[0], batch[3], batch[5]})
	assertMessages(t, e.r.on(b), []pubsub.Message{batch[1], batch[4]})
	assertMessages(t, e.r.on(none), nil)

	if e.sharded {
		return // per-channel order was checked above
	}
	// Barriers rely on this, so say so plainly when it breaks.
	var got []string
	for _, m := range e.r.snapshot().msgs {
		if m.Channel == a || m.Channel == b {
			got = append(got, m.Channel[len(e.prefix):]+"="+string(m.Data))
		}
	}
	if want := []string{"a=a0", "b=b0", "a=a1", "b=\x00\x01", "a=a2"}; !equalStrings(got, want) {
		t.Errorf("one publisher's messages to two channels arrived as %q, want %q: a broker must keep one publisher's order across channels", got, want)
	}
}

func testInvalidChannel(t *testing.T, e *env) {
	bad := []string{"", "has space", "é", strings.Repeat("a", pubsub.MaxChannelLen+1), "a*b", "#", "line\nbreak", "nul\x00"}
	for _, ch := range bad {
		if err := e.b.Subscribe(e.ctx, ch); err == nil {
			t.Errorf("Subscribe(%q) succeeded", ch)
		}
	}
	ok := e.channel("ok")
	for _, ch := range bad {
		// A call with a bad name subscribes none of its channels.
		if err := e.b.Subscribe(e.ctx, ok, ch); err == nil {
			t.Errorf("Subscribe(ok, %q) succeeded", ch)
		}
	}
	e.publish(t, text(ok, "not subscribed"))
	e.subscribe(t, ok)
	for _, ch := range bad {
		err := e.b.Publish(e.ctx, text(ok, "before "+ch), text(ch, "bad"), text(ok, "after "+ch))
		if err == nil {
			t.Errorf("Publish to %q succeeded", ch)
		}
	}
	e.barrier(t)
	// A call with a bad name delivers none of its messages, so that a
	// caller who retries after fixing it does not deliver twice.
	assertMessages(t, e.r.on(ok), nil)
}

func testDirect(t *testing.T, e *env) {
	cmds := []pubsub.Command{
		{Kind: pubsub.CommandSend, Connection: e.here(), Data: []byte("to you ✓")},
		{Kind: pubsub.CommandSend, Connection: e.here(), Data: []byte{0, 0xff, 7}, Binary: true},
		{Kind: pubsub.CommandClose, Connection: e.here(), Code: 4001, Reason: "bye ✓"},
	}
	for _, c := range cmds {
		if err := e.b.Direct(e.ctx, c); err != nil {
			t.Fatalf("Direct(%+v): %v", c, err)
		}
	}
	e.r.wait(t, "every command to be executed", func(s *snapshot) bool { return len(s.mine(e.r)) >= len(cmds) })
	got := e.r.snapshot().mine(e.r)
	if len(got) != len(cmds) {
		t.Fatalf("executed %d commands, want %d: %+v", len(got), len(cmds), got)
	}
	for i := range cmds {
		if !commandEqual(got[i], cmds[i]) {
			t.Errorf("command %d executed as %+v, want %+v", i, got[i], cmds[i])
		}
	}

	gone := pubsub.Command{Kind: pubsub.CommandSend, Connection: pubsub.NewConnectionID(pubsub.NewNodeID()), Data: []byte("x")}
	if err := e.b.Direct(e.ctx, gone); err != nil && !errors.Is(err, pubsub.ErrNoConnection) {
		t.Errorf("Direct to a connection that is nowhere: %v, want nil or ErrNoConnection", err)
	}
}

// Workers subscribe, publish and unsubscribe at the same time, each on
// channels of its own (calls for one channel never overlap: the hub orders
// them), as connections come and go on a busy node.
func testConcurrent(t *testing.T, e *env) {
	const workers, each = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			own := e.channel("worker-" + strconv.Itoa(w))
			churn := e.channel("churn-" + strconv.Itoa(w))
			if err := e.b.Subscribe(e.ctx, own); err != nil {
				t.Errorf("worker %d: Subscribe: %v", w, err)
				return
			}
			for i := range each {
				if err := e.b.Subscribe(e.ctx, churn, churn+"-b"); err != nil {
					t.Errorf("worker %d: Subscribe(churn): %v", w, err)
					return
				}
				err := e.b.Publish(e.ctx, text(own, strconv.Itoa(i)), text(churn, strconv.Itoa(i)))
				if err != nil {
					t.Errorf("worker %d: Publish: %v", w, err)
				}
				if err := e.b.Unsubscribe(e.ctx, churn, churn+"-b"); err != nil {
					t.Errorf("worker %d: Unsubscribe(churn): %v", w, err)
				}
				if err := e.b.Ready(e.ctx); err != nil {
					t.Errorf("worker %d: Ready: %v", w, err)
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for w := range workers {
		own := e.channel("worker-" + strconv.Itoa(w))
		want := make([]pubsub.Message, each)
		for i := range want {
			want[i] = text(own, strconv.Itoa(i))
		}
		e.waitCount(t, own, each)
		assertMessages(t, e.r.on(own), want)
	}
	// Every subscribe was followed by an unsubscribe, so nothing more may
	// arrive on the churned channels.
	e.barrier(t)
	before := len(e.r.snapshot().msgs)
	for w := range workers {
		e.publish(t, text(e.channel("churn-"+strconv.Itoa(w)), "after the churn"))
	}
	e.barrier(t)
	if after := len(e.r.snapshot().msgs); after != before+1 { // the barrier's mark
		t.Errorf("channels unsubscribed from still received %d messages", after-before-1)
	}
}

func testClose(t *testing.T, e *env) {
	if err := e.b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.b.Publish(e.ctx, text(e.control, "after close")); err == nil {
		t.Error("Publish after Close succeeded")
	}
	cmd := pubsub.Command{Kind: pubsub.CommandSend, Connection: e.here(), Data: []byte("x")}
	if err := e.b.Direct(e.ctx, cmd); err == nil {
		t.Error("Direct after Close succeeded")
	}
	if err := e.b.Subscribe(e.ctx, e.channel("late")); err == nil {
		t.Error("Subscribe after Close succeeded")
	}
	if err := e.b.Ready(e.ctx); err == nil {
		t.Error("Ready after Close is nil")
	}
	_ = e.b.Close() // harmless twice; its error is the broker's business
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
	return a.Channel == b.Channel && bytes.Equal(a.Data, b.Data) && a.Binary == b.Binary && a.Except == b.Except
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
		fmt.Fprintf(&b, "{%q %q (%d bytes) binary=%v except=%q}", m.Channel, d, len(m.Data), m.Binary, m.Except)
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
