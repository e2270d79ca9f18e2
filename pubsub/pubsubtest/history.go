package pubsubtest

import (
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// historySize is the history.size RunHistory configures.
const historySize = 5

// RunHistory checks that a broker keeping history (SPEC §10) records what
// it publishes to the channels that keep it, delivers each with its
// position, and reads it back. newBroker is given the HistoryConfig to
// use: a size of 5, a TTL of a minute, and only the channels whose name
// starts with the subtest's prefix followed by "rec".
func RunHistory(t *testing.T, newBroker func(t *testing.T, node string, h pubsub.HistoryConfig) pubsub.Broker) {
	t.Helper()
	tests := []struct {
		name string
		run  func(t *testing.T, e *env, h pubsub.History)
	}{
		{"Positions", testPositions},
		{"After", testAfter},
		{"Trimmed", testTrimmed},
		{"Since", testSince},
		{"NoHistory", testNoHistory},
		{"ReadWhilePublishing", testReadWhilePublishing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := uniquePrefix(t)
			cfg := pubsub.HistoryConfig{Size: historySize, TTL: time.Minute, Channels: []string{prefix + "rec*"}}
			e := setup(t, func(t *testing.T, node string) pubsub.Broker { return newBroker(t, node, cfg) })
			e.prefix = prefix
			h := pubsub.HistoryOf(e.b)
			if h == nil {
				t.Fatal("HistoryOf: nil for a broker given a history size")
			}
			tt.run(t, e, h)
		})
	}
}

func (e *env) mustAfter(t *testing.T, h pubsub.History, ch string, pos pubsub.Position) pubsub.Replay {
	t.Helper()
	r, err := h.After(e.ctx, ch, pos)
	if err != nil {
		t.Fatalf("After(%q, %v): %v", ch, pos, err)
	}
	return r
}

func offsets(msgs []pubsub.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = strconv.FormatUint(m.Offset, 10) + "=" + string(m.Data)
	}
	return out
}

func testPositions(t *testing.T, e *env, h pubsub.History) {
	rec, plain := e.channel("rec:a"), e.channel("plain")
	e.subscribe(t, rec, plain)
	if !h.Records(rec) || h.Records(plain) {
		t.Fatalf("Records(%q)=%v, Records(%q)=%v; want true, false", rec, h.Records(rec), plain, h.Records(plain))
	}
	batch := []pubsub.Message{text(rec, "a"), text(plain, "p"), {Channel: rec, Data: []byte{0, 1}, Binary: true, Except: "x"}, text(rec, "c")}
	e.publish(t, batch...)
	epoch := batch[0].Epoch
	if !pubsub.ValidEpoch(epoch) {
		t.Fatalf("Publish set the epoch %q, not a valid one", epoch)
	}
	for i, want := range []pubsub.Position{{Epoch: epoch, Offset: 1}, {}, {Epoch: epoch, Offset: 2}, {Epoch: epoch, Offset: 3}} {
		if got := pubsub.PositionOf(&batch[i]); got != want {
			t.Errorf("message %d: position %v, want %v", i, got, want)
		}
	}
	got := e.waitCount(t, rec, 3)
	e.barrier(t)
	for i, m := range got {
		if m.Epoch != epoch || m.Offset != uint64(i+1) {
			t.Errorf("delivered message %d at %s:%d, want %s:%d", i, m.Epoch, m.Offset, epoch, i+1)
		}
	}
	if p := e.waitCount(t, plain, 1)[0]; !pubsub.PositionOf(&p).IsZero() {
		t.Errorf("a message to a channel without history was delivered at %v", pubsub.PositionOf(&p))
	}
	// The position's text form reads back.
	if p, err := pubsub.ParsePosition(pubsub.PositionOf(&batch[3]).String()); err != nil || p != pubsub.PositionOf(&batch[3]) {
		t.Errorf("ParsePosition(String()) = %v, %v", p, err)
	}
}

func testAfter(t *testing.T, e *env, h pubsub.History) {
	rec := e.channel("rec:b")
	batch := []pubsub.Message{text(rec, "one"), {Channel: rec, Data: []byte{0, 0xff}, Binary: true, Except: "c1"}, text(rec, "three")}
	e.publish(t, batch...) // no subscriber: recorded all the same
	epoch := batch[0].Epoch
	r := e.mustAfter(t, h, rec, pubsub.Position{Epoch: epoch, Offset: 1})
	if !r.Complete || len(r.Messages) != 2 {
		t.Fatalf("After 1: complete=%v %q, want the 2 after it", r.Complete, offsets(r.Messages))
	}
	want := []pubsub.Message{batch[1], batch[2]}
	assertMessages(t, r.Messages, want)
	for i, m := range r.Messages {
		if m.Epoch != epoch || m.Offset != uint64(i+2) {
			t.Errorf("replayed message %d at %s:%d", i, m.Epoch, m.Offset)
		}
	}
	if r := e.mustAfter(t, h, rec, pubsub.Position{Epoch: epoch, Offset: 0}); !r.Complete || len(r.Messages) != 3 {
		t.Errorf("After 0: complete=%v %q, want all 3", r.Complete, offsets(r.Messages))
	}
	if r := e.mustAfter(t, h, rec, pubsub.Position{Epoch: epoch, Offset: 3}); !r.Complete || len(r.Messages) != 0 {
		t.Errorf("After the last: complete=%v %q, want complete and empty", r.Complete, offsets(r.Messages))
	}
	for _, pos := range []pubsub.Position{{Epoch: "someOtherEpoch", Offset: 1}, {Epoch: epoch, Offset: 4}} {
		if r := e.mustAfter(t, h, rec, pos); r.Complete || len(r.Messages) != 0 {
			t.Errorf("After %v: complete=%v %q, want incomplete and empty", pos, r.Complete, offsets(r.Messages))
		}
	}
	if r := e.mustAfter(t, h, e.channel("rec:never"), pubsub.Position{Epoch: epoch, Offset: 0}); r.Complete {
		t.Errorf("After on a channel never recorded: complete, want incomplete (its epoch is unknown)")
	}
}

func testTrimmed(t *testing.T, e *env, h pubsub.History) {
	rec := e.channel("rec:c")
	const n = 3 * historySize
	var epoch string
	for i := 1; i <= n; i++ {
		m := []pubsub.Message{text(rec, strconv.Itoa(i))}
		e.publish(t, m...)
		epoch = m[0].Epoch
	}
	// The last size are kept: after n-size they are all there, after
	// n-size-1 the first one needed is gone.
	r := e.mustAfter(t, h, rec, pubsub.Position{Epoch: epoch, Offset: n - historySize})
	if !r.Complete || len(r.Messages) != historySize || r.Messages[0].Offset != n-historySize+1 {
		t.Errorf("After %d: complete=%v %q, want the last %d", n-historySize, r.Complete, offsets(r.Messages), historySize)
	}
	if r := e.mustAfter(t, h, rec, pubsub.Position{Epoch: epoch, Offset: n - historySize - 1}); r.Complete || len(r.Messages) != 0 {
		t.Errorf("After %d: complete=%v %q, want incomplete and empty (trimmed)", n-historySize-1, r.Complete, offsets(r.Messages))
	}
	if r, err := h.Since(e.ctx, rec, time.Now().Add(-time.Hour)); err != nil || r.Complete {
		t.Errorf("Since an hour ago: complete=%v, %v; want incomplete (trimmed)", r.Complete, err)
	}
}

func testSince(t *testing.T, e *env, h pubsub.History) {
	rec := e.channel("rec:d")
	// A Redis broker's clock is Redis's, in milliseconds: on the same
	// machine, as in these tests, the two agree. (A memory broker's
	// history does not reach back before the broker began.)
	start := time.Now().Truncate(time.Millisecond)
	e.publish(t, text(rec, "1"), text(rec, "2"))
	r, err := h.Since(e.ctx, rec, start)
	if err != nil || !r.Complete || len(r.Messages) != 2 || string(r.Messages[1].Data) != "2" {
		t.Errorf("Since before the publishes: complete=%v %q, %v; want both", r.Complete, offsets(r.Messages), err)
	}
	r, err = h.Since(e.ctx, rec, time.Now().Add(2*time.Second))
	if err != nil || !r.Complete || len(r.Messages) != 0 {
		t.Errorf("Since after the publishes: complete=%v %q, %v; want complete and empty", r.Complete, offsets(r.Messages), err)
	}
	r, err = h.Since(e.ctx, e.channel("rec:never"), start)
	if err != nil || !r.Complete || len(r.Messages) != 0 {
		t.Errorf("Since on a channel never recorded: complete=%v %q, %v; want complete and empty", r.Complete, offsets(r.Messages), err)
	}
}

func testNoHistory(t *testing.T, e *env, h pubsub.History) {
	plain := e.channel("plain")
	if _, err := h.After(e.ctx, plain, pubsub.Position{Epoch: "e", Offset: 1}); !errors.Is(err, pubsub.ErrNoHistory) {
		t.Errorf("After on a channel without history: %v, want ErrNoHistory", err)
	}
	if _, err := h.Since(e.ctx, plain, time.Now()); !errors.Is(err, pubsub.ErrNoHistory) {
		t.Errorf("Since on a channel without history: %v, want ErrNoHistory", err)
	}
	// A close of the channel's subscribers is no broadcast: not recorded.
	rec := e.channel("rec:e")
	m := []pubsub.Message{{Channel: rec, Close: &pubsub.ChannelClose{Code: 4000}}}
	e.publish(t, m...)
	if !pubsub.PositionOf(&m[0]).IsZero() {
		t.Errorf("a channel close was recorded at %v", pubsub.PositionOf(&m[0]))
	}
}

// testReadWhilePublishing checks the step that makes resuming exact: a
// message delivered before a read began is in what the read returns,
// and deliveries come in offset order without a gap.
func testReadWhilePublishing(t *testing.T, e *env, h pubsub.History) {
	rec := e.channel("rec:f")
	e.subscribe(t, rec)
	const n = 300
	var wg sync.WaitGroup
	var epochMu sync.Mutex
	var epoch string
	wg.Go(func() {
		for i := 1; i <= n; i++ {
			m := []pubsub.Message{text(rec, strconv.Itoa(i))}
			if err := e.b.Publish(e.ctx, m...); err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
			epochMu.Lock()
			epoch = m[0].Epoch
			epochMu.Unlock()
		}
	})
	for reads := 0; reads < 50; reads++ {
		delivered := e.r.on(rec)
		epochMu.Lock()
		ep := epoch
		epochMu.Unlock()
		if ep == "" || len(delivered) == 0 {
			reads--
			time.Sleep(time.Millisecond)
			continue
		}
		newest := delivered[len(delivered)-1].Offset
		// Read after newest-historySize+1: what was delivered, the newest
		// at least, must be in it (or trimmed since, which is incomplete).
		from := uint64(0)
		if newest >= historySize {
			from = newest - historySize + 1
		}
		r, err := h.After(e.ctx, rec, pubsub.Position{Epoch: ep, Offset: from})
		if err != nil {
			t.Fatalf("After: %v", err)
		}
		if r.Complete && (len(r.Messages) == 0 || r.Messages[len(r.Messages)-1].Offset < newest) {
			t.Fatalf("a read begun after offset %d was delivered returned %q", newest, offsets(r.Messages))
		}
	}
	wg.Wait()
	got := e.waitCount(t, rec, n)
	for i, m := range got {
		if m.Offset != uint64(i+1) || string(m.Data) != strconv.Itoa(i+1) {
			t.Fatalf("delivery %d was %d=%q: deliveries must follow offset order without a gap", i, m.Offset, m.Data)
		}
	}
}
