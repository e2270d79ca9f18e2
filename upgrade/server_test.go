package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/internal/testsupport"
	"github.com/cablecar/cablecar/pubsub"
)

func zeroLogger() zerolog.Logger { return zerolog.Nop() }

var nopLogger = zerolog.Nop()

// connNop is a test connection's logger.
func connNop() connLog { return connLog{l: &nopLogger} }

// fakeApp is a Go stand-in for the Rack app, for tests of this package
// alone: it accepts every handshake (subscribing to ?sub=), records the
// events it is posted, and answers "echo:x" with a send of x. The e2e tests
// do the same against real Puma.
type fakeApp struct {
	addr string
	mu   sync.Mutex
	evs  map[string][]map[string]any // by connection id
	cond *sync.Cond
}

func startFakeApp(t testing.TB) *fakeApp {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &fakeApp{addr: ln.Addr().String(), evs: map[string][]map[string]any{}}
	a.cond = sync.NewCond(&a.mu)
	srv := &fasthttp.Server{Handler: a.serve}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return a
}

func (a *fakeApp) serve(ctx *fasthttp.RequestCtx) {
	if string(ctx.Request.Header.Peek("Cablecar-Upgrade")) == "websocket" {
		ctx.Response.Header.Set("Cablecar-Accept", "websocket")
		if sub := ctx.QueryArgs().Peek("sub"); len(sub) > 0 {
			ctx.Response.Header.SetBytesV("Cablecar-Subscribe", sub)
		}
		if proto := ctx.QueryArgs().Peek("proto"); len(proto) > 0 {
			ctx.Response.Header.SetBytesV("Sec-WebSocket-Protocol", proto)
		}
		ctx.SetStatusCode(200)
		return
	}
	var body struct {
		Connection struct{ ID string } `json:"connection"`
		Events     []map[string]any    `json:"events"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &body); err != nil {
		ctx.SetStatusCode(400)
		return
	}
	a.mu.Lock()
	a.evs[body.Connection.ID] = append(a.evs[body.Connection.ID], body.Events...)
	a.cond.Broadcast()
	a.mu.Unlock()
	var send []string
	for _, e := range body.Events {
		if d, _ := e["data"].(string); strings.HasPrefix(d, "echo:") {
			send = append(send, strings.TrimPrefix(d, "echo:"))
		}
	}
	if len(send) == 0 {
		ctx.SetStatusCode(204)
		return
	}
	ctx.SetContentType("application/json")
	b, _ := json.Marshal(map[string]any{"send": send})
	ctx.SetBody(b)
}

// waitEvent waits until connection id has an event matching ok.
func (a *fakeApp) waitEvent(t testing.TB, id string, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	timer := time.AfterFunc(10*time.Second, func() { a.mu.Lock(); a.cond.Broadcast(); a.mu.Unlock() })
	defer timer.Stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		for _, e := range a.evs[id] {
			if ok(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection %s: no such event within 10s; got %v", id, a.evs[id])
		}
		a.cond.Wait()
	}
}

type testNode struct {
	url    string
	server *Server
	broker pubsub.Broker
	cb     *callback.Client
}

func startNode(t testing.TB, app *fakeApp, cfg Config) *testNode {
	t.Helper()
	return startNodeWith(t, app, cfg, pubsub.NewMemory())
}

// startNodeWith is startNode with a broker of the test's own.
func startNodeWith(t testing.TB, app *fakeApp, cfg Config, broker pubsub.Broker) *testNode {
	t.Helper()
	if cfg.PingInterval == 0 {
		cfg.PingInterval, cfg.PongTimeout = time.Second, 3*time.Second
	}
	if cfg.SendQueue == 0 {
		cfg.SendQueue = 64
	}
	if cfg.MaxMessageSize == 0 {
		cfg.MaxMessageSize = 1 << 20
	}
	cfg.Origins, _ = auth.NewOriginPolicy(nil)
	reg := prometheus.NewRegistry()
	cb := callback.New(callback.Config{
		Network: "tcp", Address: app.addr, ConnectTimeout: time.Second,
		Timeout: 5 * time.Second, Retries: 1, MaxInFlight: 64,
	}, zeroLogger(), reg)
	prepare := func(ctx *fasthttp.RequestCtx, h *fasthttp.RequestHeader) string {
		ctx.Request.Header.CopyTo(h)
		h.Del("Connection")
		h.Del("Upgrade")
		return "test"
	}
	s := New(cfg, zeroLogger(), reg, cb, broker, prepare)
	if err := broker.Start(context.Background(), s.Hub()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := &fasthttp.Server{Handler: s.ServeHTTP, KeepHijackedConns: true}
	go front.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		front.Shutdown()
		s.Shutdown(ctx)
		cb.Wait(ctx)
		broker.Close()
	})
	return &testNode{url: "ws://" + ln.Addr().String(), server: s, broker: broker, cb: cb}
}

func dial(t testing.TB, url string) (*websocket.Conn, string) {
	t.Helper()
	var d websocket.Dialer
	d.HandshakeTimeout = 5 * time.Second
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws, ""
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testsupport.Eventually(t, what, 10*time.Second, cond)
}

// onlyConn returns the id of the node's one connection.
func onlyConn(t testing.TB, n *testNode) string {
	t.Helper()
	var id string
	waitFor(t, "one connection", func() bool { return n.server.Hub().Count() == 1 })
	for i := range n.server.hub.shards {
		s := &n.server.hub.shards[i]
		s.mu.RLock()
		for k := range s.conns {
			id = k
		}
		s.mu.RUnlock()
	}
	return id
}

func TestEchoAndClose(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{})
	ws, _ := dial(t, n.url+"/chat")
	id := onlyConn(t, n)
	app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "open" && e["id"] == id+":1" })

	if err := ws.WriteMessage(websocket.TextMessage, []byte("echo:hi")); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, got, err := ws.ReadMessage()
	if err != nil || string(got) != "hi" {
		t.Fatalf("read %q, %v; want hi", got, err)
	}
	ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "bye"))
	e := app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "close" })
	if e["code"] != float64(4001) || e["reason"] != "bye" || e["by"] != "client" || e["id"] != id+":3" {
		t.Fatalf("close event %v", e)
	}
	waitFor(t, "the connection to be gone", func() bool { return n.server.Hub().Count() == 0 })
}

func TestBroadcastReachesEverySubscriber(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{})
	const clients = 50
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		conns[i], _ = dial(t, n.url+"/chat?sub=room:1")
	}
	waitFor(t, "every client", func() bool { return n.server.Hub().Count() == clients })
	if err := n.broker.Publish(context.Background(), pubsub.Message{Channel: "room:1", Data: []byte("to all")}); err != nil {
		t.Fatal(err)
	}
	for i, ws := range conns {
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, got, err := ws.ReadMessage()
		if err != nil || string(got) != "to all" {
			t.Fatalf("client %d read %q, %v", i, got, err)
		}
	}
}

func TestSlowClientIsClosedAlone(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{SendQueue: 4, WriteTimeout: time.Second})
	slow, _ := dial(t, n.url+"/chat?sub=room:1") // never reads
	_ = slow
	fast, _ := dial(t, n.url+"/chat?sub=room:1")
	waitFor(t, "both clients", func() bool { return n.server.Hub().Count() == 2 })

	// In lockstep with the reading client, so that only the other one
	// falls behind: its socket buffers fill, then its queue.
	big := []byte(strings.Repeat("x", 64<<10))
	for i := 0; i < 400 && n.server.Hub().Count() == 2; i++ {
		if err := n.broker.Publish(context.Background(), pubsub.Message{Channel: "room:1", Data: big}); err != nil {
			t.Fatal(err)
		}
		fast.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, got, err := fast.ReadMessage(); err != nil || len(got) != len(big) {
			t.Fatalf("the reading client, message %d: %d bytes, %v", i, len(got), err)
		}
	}
	waitFor(t, "the slow client to be closed", func() bool { return n.server.Hub().Count() == 1 })
}

// An idle connection costs one goroutine, its read loop: the writer and
// the webhook sender exist only while they have work, and heartbeats come
// from the hub's one ticker. (Memory per connection is measured on the
// real binary by make bench-ws.)
func TestIdleConnectionIsOneGoroutine(t *testing.T) {
	const conns = 50
	app := startFakeApp(t)
	n := startNode(t, app, Config{PingInterval: 50 * time.Millisecond, PongTimeout: time.Minute})
	for range conns {
		dial(t, n.url+"/idle?sub=room:1")
	}
	waitFor(t, "every connection", func() bool { return n.server.Hub().Count() == conns })
	// Pings go out every 50ms, so writers come and go; between them, once
	// the open events are delivered, only the read loops stay. Every
	// connection has had writes to make before this is judged.
	waitFor(t, "a few pings to every connection", func() bool {
		var m dto.Metric
		n.server.metrics.pings.Write(&m)
		return m.GetCounter().GetValue() >= 3*conns
	})
	var counts map[string]int
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The read loop of an idle connection waits in idle (read.go).
		counts = goroutinesIn("upgrade.(*Conn).idle(", "upgrade.(*Conn).writeLoop(", "callback.(*Stream).run(")
		if counts["upgrade.(*Conn).idle("] == conns && counts["upgrade.(*Conn).writeLoop("] == 0 && counts["callback.(*Stream).run("] == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("with %d idle connections: %v; want %d read loops and no writer or sender", conns, counts, conns)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// goroutinesIn counts the goroutines whose stack has each of the frames.
func goroutinesIn(frames ...string) map[string]int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	counts := map[string]int{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range frames {
			if strings.Contains(g, f) {
				counts[f]++
			}
		}
	}
	return counts
}

// A fenced connection (its node's lease lapsed) is closed with 1012 and
// sends no close event: another node has sent its node_lost close.
func TestFenceClosesWithoutCloseEvent(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{})
	ws, _ := dial(t, n.url+"/chat")
	id := onlyConn(t, n)
	app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "open" })

	n.server.Hub().Fence([]string{id})
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseServiceRestart {
		t.Fatalf("client got %v, want close 1012", err)
	}
	ws.Close()
	waitFor(t, "the connection to be gone", func() bool { return n.server.Hub().Count() == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.cb.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	app.mu.Lock()
	defer app.mu.Unlock()
	for _, e := range app.evs[id] {
		if e["type"] == "close" {
			t.Fatalf("a fenced connection sent a close event: %v", e)
		}
	}
}
