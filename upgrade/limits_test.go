package upgrade

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
)

// bareConn is a connection of a hub with no socket: what it queues stays
// queued, so the queue's accounting can be looked at directly.
func bareConn(t *testing.T, cfg Config) *Conn {
	t.Helper()
	cfg.setDefaults()
	if cfg.SendQueue == 0 {
		cfg.SendQueue = 64
	}
	h := newHub(cfg, zeroLogger(), pubsub.NewMemory(), newMetrics(prometheus.NewRegistry()))
	return &Conn{hub: h, id: "c_test", log: connNop()}
}

func (c *Conn) queueState() (msgs int, bytes int64, end *closing) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue), c.queued.Load(), c.end
}

// The send queue counts its bytes exactly and closes the connection as
// slow once they would pass send_queue_bytes; a single message larger than
// the bound still goes into an empty queue.
func TestSendQueueBytes(t *testing.T) {
	msg := func(n int) outgoing { return outgoing{data: make([]byte, n), size: n} }

	c := bareConn(t, Config{SendQueue: 100, SendQueueBytes: 1000})
	c.enqueue(msg(600))
	c.enqueue(outgoing{frame: newFrame(false, make([]byte, 300)), size: 300}) // a shared broadcast counts its payload
	if n, b, end := c.queueState(); n != 2 || b != 900 || end != nil {
		t.Fatalf("after 600 + 300 bytes: %d messages, %d bytes, end %v", n, b, end)
	}
	c.enqueue(msg(100)) // exactly the bound
	if n, b, end := c.queueState(); n != 3 || b != 1000 || end != nil {
		t.Fatalf("at the bound: %d messages, %d bytes, end %v", n, b, end)
	}
	c.enqueue(msg(1))
	n, b, end := c.queueState()
	if end == nil || end.by != BySlow || end.code != websocket.ClosePolicyViolation {
		t.Fatalf("one byte past the bound: end %+v, want 1008 by slow", end)
	}
	if n != 0 || b != 0 {
		t.Errorf("a slow client's queue is dropped: %d messages, %d bytes left", n, b)
	}

	c = bareConn(t, Config{SendQueue: 100, SendQueueBytes: 1000})
	c.enqueue(msg(5000))
	if n, b, end := c.queueState(); n != 1 || b != 5000 || end != nil {
		t.Fatalf("one large message into an empty queue: %d messages, %d bytes, end %v", n, b, end)
	}
	c.enqueue(msg(1))
	if _, _, end := c.queueState(); end == nil || end.by != BySlow {
		t.Fatalf("anything behind a message past the bound: end %+v, want by slow", end)
	}

	// The bound in messages holds as before.
	c = bareConn(t, Config{SendQueue: 2, SendQueueBytes: 1 << 20})
	c.enqueue(msg(1))
	c.enqueue(msg(1))
	c.enqueue(msg(1))
	if _, _, end := c.queueState(); end == nil || end.by != BySlow {
		t.Fatalf("a third message with send_queue 2: end %+v, want by slow", end)
	}
}

// What is written leaves the count: a client that reads everything ends
// with nothing counted against it.
func TestSendQueueBytesReturnToZero(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{SendQueueBytes: 64 << 10})
	ws, _ := dial(t, n.url+"/chat?sub=room:1")
	id := onlyConn(t, n)
	app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "open" })
	c := n.server.hub.get(id)
	for i := range 50 {
		data := []byte(strings.Repeat("b", 1000+i))
		if err := n.broker.Publish(context.Background(), pubsub.Message{Channel: "room:1", Data: data}); err != nil {
			t.Fatal(err)
		}
		if err := ws.WriteMessage(websocket.TextMessage, []byte("echo:"+string(data))); err != nil {
			t.Fatal(err)
		}
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i := range 100 {
		if _, _, err := ws.ReadMessage(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	waitFor(t, "every written byte to leave the count", func() bool { return c.queued.Load() == 0 })
}

// A client that sends large messages to an echoing app and reads none of
// the answers is closed 1008 by slow once send_queue_bytes are waiting,
// long before send_queue messages are.
func TestSlowReaderClosedByBytes(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{SendQueue: 1000, SendQueueBytes: 64 << 10, WriteTimeout: time.Minute,
		PingInterval: time.Second, PongTimeout: time.Minute})
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, ReadBufferSize: 1024,
		NetDialContext: (&net.Dialer{Control: smallReceiveBuffer}).DialContext}
	ws, _, err := d.Dial(n.url+"/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	id := onlyConn(t, n)
	app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "open" })
	c := n.server.hub.get(id)

	msg := []byte("echo:" + strings.Repeat("m", 48<<10))
	sent := 0
	for ; sent < 400; sent++ {
		ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, msg); err != nil {
			break
		}
		if n.server.Hub().Count() == 0 {
			break
		}
	}
	wrote := time.Now()
	e := app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "close" })
	t.Logf("%d messages sent; close event %v %s after the last", sent, e, time.Since(wrote).Round(time.Millisecond))
	if e["by"] != BySlow || e["code"] != float64(websocket.ClosePolicyViolation) {
		t.Fatalf("after %d messages of 48 KiB never read: close event %v, want 1008 by slow", sent, e)
	}
	// Dropped, cut short or written: every byte left the count.
	if q := c.queued.Load(); q != 0 {
		t.Fatalf("%d bytes still counted after teardown", q)
	}
}

func smallReceiveBuffer(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
	})
	if err != nil {
		return err
	}
	return serr
}

// Pings and pongs from the client count toward the rate limit: a flood of
// either is closed 1008 by rate_limit, as a flood of messages is.
func TestControlFloodIsRateLimited(t *testing.T) {
	for name, kind := range map[string]int{"pings": websocket.PingMessage, "pongs": websocket.PongMessage} {
		t.Run(name, func(t *testing.T) {
			app := startFakeApp(t)
			n := startNode(t, app, Config{RatePerSecond: 1, RateBurst: 5})
			ws, _ := dial(t, n.url+"/chat")
			id := onlyConn(t, n)
			app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "open" })
			closed := make(chan error, 1)
			go func() {
				for {
					if _, _, err := ws.ReadMessage(); err != nil {
						closed <- err
						return
					}
				}
			}()
			for range 50 {
				if err := ws.WriteControl(kind, []byte("x"), time.Now().Add(5*time.Second)); err != nil {
					break
				}
			}
			select {
			case err := <-closed:
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
					t.Fatalf("after 50 control frames: %v, want close 1008", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("50 control frames past a burst of 5 and the connection is still open")
			}
			e := app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "close" })
			if e["by"] != ByRateLimit {
				t.Fatalf("close event %v, want by rate_limit", e)
			}
		})
	}
}

// Pongs not yet written are one pong, carrying the latest ping's data:
// however fast a client pings, what waits for it stays one control frame.
func TestPongsCoalesce(t *testing.T) {
	c := bareConn(t, Config{})
	for i := range 1000 {
		c.queuePong(fmt.Sprintf("ping %d", i))
	}
	c.mu.Lock()
	due, data, queued := c.pongDue, string(c.pong), len(c.queue)
	c.mu.Unlock()
	if !due || data != "ping 999" || queued != 0 {
		t.Fatalf("after 1000 pings: pong due %v with %q, %d queued; want one pong with the last ping's data", due, data, queued)
	}

	// On the wire, without a rate limit: the last pong answers the last
	// ping, and the connection lives on.
	app := startFakeApp(t)
	n := startNode(t, app, Config{})
	ws, _ := dial(t, n.url+"/chat")
	var (
		mu   sync.Mutex
		last string
		got  atomic.Int64
	)
	ws.SetPongHandler(func(data string) error {
		mu.Lock()
		last = data
		mu.Unlock()
		got.Add(1)
		return nil
	})
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	const pings = 2000
	for i := range pings {
		if err := ws.WriteControl(websocket.PingMessage, []byte(fmt.Sprint(i)), time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the pong of the last ping", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return last == fmt.Sprint(pings-1)
	})
	t.Logf("%d pings answered with %d pongs", pings, got.Load())
	if got.Load() > pings {
		t.Fatalf("%d pongs for %d pings", got.Load(), pings)
	}
	if n.server.Hub().Count() != 1 {
		t.Fatal("the pinging client was closed")
	}
}

// flakyBroker is the memory broker behind a switch: while down it is not
// ready and a subscription hangs until its caller gives up, as Redis does
// when it is away. It notes the channels it is subscribed to.
type flakyBroker struct {
	*pubsub.Memory
	down atomic.Bool
	mu   sync.Mutex
	refs map[string]int
}

func newFlakyBroker() *flakyBroker {
	return &flakyBroker{Memory: pubsub.NewMemory(), refs: map[string]int{}}
}

func (b *flakyBroker) Ready(ctx context.Context) error {
	if b.down.Load() {
		return errors.New("broker down")
	}
	return b.Memory.Ready(ctx)
}

func (b *flakyBroker) Subscribe(ctx context.Context, chs ...string) error {
	if b.down.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	if err := b.Memory.Subscribe(ctx, chs...); err != nil {
		return err
	}
	b.mu.Lock()
	for _, ch := range chs {
		b.refs[ch] = 1
	}
	b.mu.Unlock()
	return nil
}

func (b *flakyBroker) Unsubscribe(ctx context.Context, chs ...string) error {
	b.mu.Lock()
	for _, ch := range chs {
		delete(b.refs, ch)
	}
	b.mu.Unlock()
	return b.Memory.Unsubscribe(ctx, chs...)
}

func (b *flakyBroker) held(ch string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refs[ch]
}

// stuckTracker never gets its records written, like a registry whose
// Redis is away.
type stuckTracker struct{}

func (stuckTracker) Track(registry.ConnRecord)         {}
func (stuckTracker) Update(string, string, []string)   {}
func (stuckTracker) Untrack(string)                    {}
func (stuckTracker) Written(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }

// With the broker away, a handshake asking for a channel is accepted at
// once and its client's first message reaches the app well within the
// broker's 5 s timeout; the subscription is made when the broker is back,
// and broadcasts then arrive. A connection gone before that leaves no
// subscription behind.
func TestAcceptWhileBrokerDown(t *testing.T) {
	app := startFakeApp(t)
	b := newFlakyBroker()
	n := startNodeWith(t, app, Config{Tracker: stuckTracker{}}, b)
	b.down.Store(true)

	start := time.Now()
	ws, _ := dial(t, n.url+"/chat?sub=room:1")
	gone, _ := dial(t, n.url+"/chat?sub=room:2")
	if err := ws.WriteMessage(websocket.TextMessage, []byte("echo:first")); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, got, err := ws.ReadMessage(); err != nil || string(got) != "first" {
		t.Fatalf("with the broker down: read %q, %v; want the echo of the first message", got, err)
	}
	// A contract deadline with a margin: the broker's timeout is 5 s.
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("with the broker down, the first echo took %s", d)
	}
	gone.Close()
	waitFor(t, "the closed client to be gone", func() bool { return n.server.Hub().Count() == 1 })

	b.down.Store(false)
	waitFor(t, "the subscription to reach the broker", func() bool { return b.held("room:1") == 1 })
	if err := n.broker.Publish(context.Background(), pubsub.Message{Channel: "room:1", Data: []byte("back")}); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, got, err := ws.ReadMessage(); err != nil || string(got) != "back" {
		t.Fatalf("after the broker came back: read %q, %v", got, err)
	}
	if h := b.held("room:2"); h != 0 {
		t.Errorf("a connection that left while the broker was down left its channel subscribed (%d)", h)
	}
	n.server.hub.pendMu.Lock()
	pending := len(n.server.hub.pending)
	n.server.hub.pendMu.Unlock()
	if pending != 0 {
		t.Errorf("%d channels still pending", pending)
	}
}

// A connection waiting for its record to reach the broker stops waiting
// when the broker goes away meanwhile, rather than after the broker's
// timeout; and the heartbeat does not count that wait as the client's
// silence.
func TestRecordWaitEndsWhenBrokerGoes(t *testing.T) {
	app := startFakeApp(t)
	b := newFlakyBroker()
	n := startNodeWith(t, app, Config{Tracker: stuckTracker{}, PingInterval: 100 * time.Millisecond,
		PongTimeout: 300 * time.Millisecond}, b)
	start := time.Now()
	ws, _ := dial(t, n.url+"/chat")
	b.down.Store(true)
	if err := ws.WriteMessage(websocket.TextMessage, []byte("echo:first")); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, got, err := ws.ReadMessage(); err != nil || string(got) != "first" {
		t.Fatalf("read %q, %v; want the echo of the first message", got, err)
	}
	// A contract deadline with a margin: the broker's timeout is 5 s.
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("with the broker gone while the record was awaited, the first echo took %s", d)
	}
}
