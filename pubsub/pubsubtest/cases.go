package pubsubtest

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// The cases of the contract, each run by Run against a fresh env.

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
		// A close of the channel's subscribers goes where a broadcast goes.
		{Channel: ch, Close: &pubsub.ChannelClose{Code: 4000, Reason: "bye", NoReconnect: true}},
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
