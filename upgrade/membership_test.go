package upgrade

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cablecar/cablecar/pubsub"
)

// recBroker is a broker without a network that records the calls it gets,
// holds the node's subscriptions as a set, and fails the test when two
// calls for one channel overlap (the hub promises they never do). Its
// calls can be held at a gate, or fail as a broker that is away.
type recBroker struct {
	t testing.TB

	mu       sync.Mutex
	calls    []brokerCall
	subs     map[string]bool
	inFlight map[string]bool

	down     atomic.Bool     // Ready fails, Subscribe waits for its ctx
	gate     chan struct{}   // when set, Subscribe and Unsubscribe wait for it
	entered  chan brokerCall // told of every call reaching the gate
	jitter   bool            // calls yield a random short while
	closed   atomic.Bool
	gateOnce sync.Once
}

type brokerCall struct {
	op       string // "sub" or "unsub"
	channels []string
	err      error
}

func newRecBroker(t testing.TB) *recBroker {
	return &recBroker{t: t, subs: map[string]bool{}, inFlight: map[string]bool{}}
}

func (b *recBroker) call(ctx context.Context, op string, channels []string) error {
	b.mu.Lock()
	for _, ch := range channels {
		if b.inFlight[ch] {
			b.t.Errorf("two broker calls for %q overlap", ch)
		}
		b.inFlight[ch] = true
	}
	gate := b.gate
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		for _, ch := range channels {
			delete(b.inFlight, ch)
		}
		b.mu.Unlock()
	}()
	if gate != nil {
		if b.entered != nil {
			b.entered <- brokerCall{op: op, channels: slices.Clone(channels)}
		}
		<-gate
	}
	if b.jitter {
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
	}
	var err error
	switch {
	case b.closed.Load():
		err = pubsub.ErrClosed
	case op == "sub" && b.down.Load():
		<-ctx.Done()
		err = ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, brokerCall{op: op, channels: slices.Clone(channels), err: err})
	if err == nil {
		for _, ch := range channels {
			b.subs[ch] = op == "sub"
		}
	}
	return err
}

func (b *recBroker) Subscribe(ctx context.Context, channels ...string) error {
	return b.call(ctx, "sub", channels)
}

func (b *recBroker) Unsubscribe(ctx context.Context, channels ...string) error {
	return b.call(ctx, "unsub", channels)
}

func (b *recBroker) Start(context.Context, pubsub.Sink) error         { return nil }
func (b *recBroker) Publish(context.Context, ...pubsub.Message) error { return nil }
func (b *recBroker) Direct(context.Context, pubsub.Command) error     { return nil }
func (b *recBroker) Close() error                                     { b.closed.Store(true); return nil }
func (b *recBroker) Ready(context.Context) error {
	if b.down.Load() {
		return errors.New("broker down")
	}
	return nil
}

// subscribed reports whether the node is subscribed to ch in the broker.
func (b *recBroker) subscribed(ch string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[ch]
}

// held is every channel the node is subscribed to, sorted.
func (b *recBroker) held() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for ch, in := range b.subs {
		if in {
			out = append(out, ch)
		}
	}
	slices.Sort(out)
	return out
}

func (b *recBroker) history() []brokerCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

// openGate lets every held call through, and every later one.
func (b *recBroker) openGate() { b.gateOnce.Do(func() { close(b.gate) }) }

// bareHub is a hub with no server and no sockets: its connections queue
// what they are sent, and it is told of joins and leaves directly.
func bareHub(t *testing.T, b pubsub.Broker, cfg Config) *Hub {
	t.Helper()
	cfg.setDefaults()
	if cfg.SendQueue == 0 {
		cfg.SendQueue = 1000
	}
	h := newHub(cfg, zeroLogger(), b, newMetrics(prometheus.NewRegistry()))
	t.Cleanup(h.cancel)
	return h
}

func (h *Hub) bareConn(id string) *Conn {
	return &Conn{hub: h, id: id, log: connNop()}
}

// channelsOf is c's own list of its channels.
func (c *Conn) channelsOf() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.channels)
}

// members is how many local members ch has, and whether the hub still
// knows it at all.
func (h *Hub) members(ch string) (int, bool) {
	s := h.chanShard(ch)
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.chans[ch]
	if c == nil {
		return 0, false
	}
	return len(c.members), true
}

func rooms(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "room:" + strconv.Itoa(i)
	}
	return out
}

// An accept with ten channels costs one Subscribe of all ten; a second
// connection joining them costs none; the broker hears of a channel again
// only when its last member leaves, in one Unsubscribe for all of those.
func TestJoinBatchesBrokerCalls(t *testing.T) {
	b := newRecBroker(t)
	h := bareHub(t, b, Config{})
	ten := rooms(10)
	a, c := h.bareConn("a"), h.bareConn("c")

	if err := a.subscribe(ten...); err != nil {
		t.Fatal(err)
	}
	if got := b.history(); len(got) != 1 || got[0].op != "sub" || !slices.Equal(got[0].channels, ten) {
		t.Fatalf("broker calls after one accept with ten channels: %+v, want one Subscribe of all ten", got)
	}
	if got := a.channelsOf(); !slices.Equal(got, ten) {
		t.Errorf("the connection lists %q, want %q in join order", got, ten)
	}
	if err := c.subscribe(append([]string{"room:0", "room:5", "own"}, ten...)...); err != nil {
		t.Fatal(err)
	}
	if got := b.history(); len(got) != 2 || !slices.Equal(got[1].channels, []string{"own"}) {
		t.Fatalf("broker calls after a second connection: %+v, want one more, for its own channel only", got)
	}
	a.unsubscribe("room:3", "room:4", "nope")
	if got := a.channelsOf(); len(got) != 8 || slices.Contains(got, "room:3") {
		t.Errorf("after leaving two: %q", got)
	}
	a.leaveAll()
	if got := b.history(); len(got) != 2 {
		t.Fatalf("leaving channels another connection still has: %+v, want no broker call", got[2:])
	}
	c.leaveAll()
	got := b.history()
	if len(got) != 3 || got[2].op != "unsub" || len(got[2].channels) != 11 {
		t.Fatalf("the last member leaving eleven channels: %+v, want one Unsubscribe of all eleven", got[2:])
	}
	if held := b.held(); len(held) != 0 {
		t.Errorf("still subscribed in the broker to %q", held)
	}
	for _, ch := range append(ten, "own") {
		if _, known := h.members(ch); known {
			t.Errorf("the hub still knows %q with no member", ch)
		}
	}
}

// A name that is not a channel is refused and the others are joined.
func TestJoinInvalidChannel(t *testing.T) {
	b := newRecBroker(t)
	h := bareHub(t, b, Config{})
	a := h.bareConn("a")
	if err := a.subscribe("ok", "not ok", "fine"); err == nil {
		t.Error("joining an invalid channel name succeeded")
	}
	if got := a.channelsOf(); !slices.Equal(got, []string{"ok", "fine"}) {
		t.Errorf("joined %q, want the two valid channels", got)
	}
	if got := b.history(); len(got) != 1 || !slices.Equal(got[0].channels, []string{"ok", "fine"}) {
		t.Errorf("broker calls %+v", got)
	}
}

// With the broker closed (shutdown), a join fails and leaves nothing.
func TestJoinBrokerClosed(t *testing.T) {
	b := newRecBroker(t)
	h := bareHub(t, b, Config{})
	b.Close()
	a := h.bareConn("a")
	if err := a.subscribe("room"); !errors.Is(err, pubsub.ErrClosed) {
		t.Fatalf("join with the broker closed: %v, want ErrClosed", err)
	}
	if got := a.channelsOf(); len(got) != 0 {
		t.Errorf("the connection lists %q", got)
	}
	if n, known := h.members("room"); known {
		t.Errorf("the hub keeps the channel (%d members)", n)
	}
}

// The last member leaving (Unsubscribe in flight) while a first member
// joins: the join waits for the Unsubscribe, then the channel is
// subscribed again, and the join returns only once it is.
func TestJoinWhileUnsubscribing(t *testing.T) {
	b := newRecBroker(t)
	h := bareHub(t, b, Config{})
	a, c := h.bareConn("a"), h.bareConn("c")
	if err := a.subscribe("room"); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.gate, b.entered = make(chan struct{}), make(chan brokerCall, 4)
	b.mu.Unlock()
	t.Cleanup(b.openGate)

	left := make(chan struct{})
	go func() { a.leaveAll(); close(left) }()
	if call := <-b.entered; call.op != "unsub" {
		t.Fatalf("first call at the gate: %+v", call)
	}
	joined := make(chan error)
	go func() { joined <- c.subscribe("room") }()
	waitFor(t, "the joiner to be a member", func() bool { n, _ := h.members("room"); return n == 1 })
	select {
	case err := <-joined:
		t.Fatalf("the join returned (%v) while the channel was being unsubscribed", err)
	case <-left:
		t.Fatal("the leave returned before the broker answered")
	default:
	}
	b.openGate()
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	if !b.subscribed("room") {
		t.Fatal("the join returned with the node unsubscribed from its channel")
	}
	<-left
	var ops []string
	for _, call := range b.history() {
		ops = append(ops, call.op)
	}
	if want := []string{"sub", "unsub", "sub"}; !slices.Equal(ops, want) {
		t.Errorf("broker calls %q, want %q", ops, want)
	}
}

// A connection torn down while its join waits for the broker: the channel
// is not left subscribed with no member.
func TestTeardownWhileSubscribing(t *testing.T) {
	b := newRecBroker(t)
	h := bareHub(t, b, Config{})
	b.gate, b.entered = make(chan struct{}), make(chan brokerCall, 4)
	t.Cleanup(b.openGate)
	a := h.bareConn("a")
	joined := make(chan error)
	go func() { joined <- a.subscribe("room", "hall") }()
	<-b.entered
	a.mu.Lock()
	a.torn = true
	a.mu.Unlock()
	a.leaveAll()
	b.openGate()
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	if held := b.held(); len(held) != 0 {
		t.Errorf("subscribed in the broker to %q with no member", held)
	}
	if got := a.channelsOf(); len(got) != 0 {
		t.Errorf("a torn-down connection lists %q", got)
	}
	for _, ch := range []string{"room", "hall"} {
		if _, known := h.members(ch); known {
			t.Errorf("the hub still knows %q", ch)
		}
	}
}

// Many connections joining and leaving a few channels at once, the broker
// answering after random short waits: no two calls for a channel overlap
// (recBroker), every join returns with its channels subscribed in the
// broker, and at the end the broker holds exactly the channels that have
// members. Run it with -race.
func TestJoinLeaveRace(t *testing.T) {
	b := newRecBroker(t)
	b.jitter = true
	h := bareHub(t, b, Config{})
	chans := rooms(16)
	const workers, rounds = 8, 300
	conns := make([]*Conn, workers)
	var wg sync.WaitGroup
	for w := range conns {
		c := h.bareConn("c" + strconv.Itoa(w))
		conns[w] = c
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range rounds {
				pick := []string{chans[r.IntN(len(chans))], chans[r.IntN(len(chans))]}
				if err := c.subscribe(pick...); err != nil {
					t.Error(err)
					return
				}
				// Still a member: the node cannot have left these.
				for _, ch := range pick {
					if !b.subscribed(ch) {
						t.Errorf("%s joined %q and returned, but the node is not subscribed to it", c.id, ch)
					}
				}
				if r.IntN(2) == 0 {
					c.leaveAll()
				} else {
					c.unsubscribe(pick[0])
				}
			}
		})
	}
	wg.Wait()
	// Some connections end as members: the broker holds exactly theirs.
	var want []string
	for _, ch := range chans {
		n, _ := h.members(ch)
		if n > 0 {
			want = append(want, ch)
		}
	}
	if got := b.held(); !slices.Equal(got, want) {
		t.Errorf("the broker holds %q; the channels with members are %q", got, want)
	}
	for _, c := range conns {
		c.leaveAll()
	}
	if got := b.held(); len(got) != 0 {
		t.Errorf("with every member gone the broker still holds %q", got)
	}
	for _, ch := range chans {
		if n, known := h.members(ch); known {
			t.Errorf("the hub still knows %q (%d members)", ch, n)
		}
	}
	t.Logf("%d broker calls for %d joins", len(b.history()), workers*rounds)
}

// While the broker is away a join returns at once, its channel joined
// here; when the broker is back, the pending channels are subscribed, all
// in one call. A channel left meanwhile is not.
func TestJoinWhileBrokerDown(t *testing.T) {
	b := newRecBroker(t)
	h := bareHub(t, b, Config{})
	b.down.Store(true)
	conns := []*Conn{h.bareConn("a"), h.bareConn("b"), h.bareConn("c"), h.bareConn("gone")}
	start := time.Now()
	for i, c := range conns {
		if err := c.subscribe("room:" + strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	// A contract deadline with a wide margin: each join waits awayWait at
	// most, against a broker timeout of 5 s.
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("four joins with the broker away took %s", d)
	}
	for i, c := range conns {
		if got := c.channelsOf(); len(got) != 1 {
			t.Errorf("connection %d lists %q", i, got)
		}
	}
	conns[3].leaveAll()
	b.down.Store(false)
	waitFor(t, "the pending channels to be subscribed", func() bool {
		return slices.Equal(b.held(), []string{"room:0", "room:1", "room:2"})
	})
	var ok []brokerCall
	for _, call := range b.history() {
		if call.op == "sub" && call.err == nil {
			ok = append(ok, call)
		}
	}
	if len(ok) != 1 || len(ok[0].channels) != 3 {
		t.Errorf("successful Subscribes %+v, want one of the three pending channels", ok)
	}
	h.pendMu.Lock()
	pending := len(h.pending)
	h.pendMu.Unlock()
	if pending != 0 {
		t.Errorf("%d channels still pending", pending)
	}
}

// queued is the data of every message in c's queue, in order.
func (c *Conn) queuedData() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.queue))
	for i, o := range c.queue {
		out[i] = string(o.data)
		if o.frame != nil {
			out[i] = "prepared"
		}
	}
	return out
}

// A broadcast split over several goroutines reaches every member once, but
// the one left out, and one publisher's broadcasts reach every member in
// the order they were published.
func TestFanoutOrder(t *testing.T) {
	h := bareHub(t, newRecBroker(t), Config{SendQueue: 100})
	const n, msgs = 3*fanoutPart + 7, 40
	targets := make([]*Conn, n)
	for i := range targets {
		targets[i] = h.bareConn("c" + strconv.Itoa(i))
	}
	for m := range msgs {
		out := outgoing{data: []byte(strconv.Itoa(m)), size: 1}
		fanout(targets, out, "c"+strconv.Itoa(m), 4)
	}
	for i, c := range targets {
		var want []string
		for m := range msgs {
			if m != i {
				want = append(want, strconv.Itoa(m))
			}
		}
		if got := c.queuedData(); !slices.Equal(got, want) {
			t.Fatalf("connection %d got %q, want %q", i, got, want)
		}
	}
}

// Deliver reaches the channel's members through the hub's sets, each
// once, and no one else.
func TestDeliverToMembers(t *testing.T) {
	h := bareHub(t, newRecBroker(t), Config{SendQueue: 100})
	const n = 2*fanoutPart + 1
	var in, out []*Conn
	for i := range n {
		c := h.bareConn("c" + strconv.Itoa(i))
		ch := "room"
		if i%10 == 0 {
			ch, out = "other", append(out, c)
		} else {
			in = append(in, c)
		}
		if err := c.subscribe(ch); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		h.Deliver(pubsub.Message{Channel: "room", Data: []byte("x"), Except: in[0].id})
	}
	h.Deliver(pubsub.Message{Channel: "nobody", Data: []byte("x")})
	for i, c := range in {
		want := 3
		if i == 0 {
			want = 0
		}
		if got := len(c.queuedData()); got != want {
			t.Fatalf("member %s got %d messages, want %d", c.id, got, want)
		}
	}
	for _, c := range out {
		if got := len(c.queuedData()); got != 0 {
			t.Fatalf("%s, not a member, got %d messages", c.id, got)
		}
	}
}

// One broadcast to 10,000 members of one channel, as the node's fan-out
// does it: encoded once, split over GOMAXPROCS goroutines.
func BenchmarkDeliver10k(b *testing.B) {
	cfg := Config{SendQueue: 1 << 30, SendQueueBytes: 1 << 40}
	cfg.setDefaults()
	h := newHub(cfg, zeroLogger(), newRecBroker(b), newMetrics(prometheus.NewRegistry()))
	defer h.cancel()
	conns := make([]*Conn, 10000)
	for i := range conns {
		conns[i] = h.bareConn(fmt.Sprint("c", i))
		if err := conns[i].subscribe("room"); err != nil {
			b.Fatal(err)
		}
	}
	msg := pubsub.Message{Channel: "room", Data: []byte(`{"type":"chat","text":"hello"}`)}
	b.ReportAllocs()
	for b.Loop() {
		h.Deliver(msg)
		b.StopTimer()
		for _, c := range conns {
			c.mu.Lock()
			clear(c.queue)
			c.queue = c.queue[:0]
			c.queued.Store(0)
			c.mu.Unlock()
		}
		b.StartTimer()
	}
}
