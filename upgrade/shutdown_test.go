package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// shutdownApp accepts every handshake, asking for the events in ?events=
// (all four when absent), and answers a shutdown event with a send of
// "bye <id>", after hold when one is set. It records every event type.
type shutdownApp struct {
	addr string
	hold chan struct{} // nil: answer at once

	mu    sync.Mutex
	types map[string][]string // by connection id
}

func startShutdownApp(t *testing.T, hold chan struct{}) *shutdownApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &shutdownApp{addr: ln.Addr().String(), hold: hold, types: map[string][]string{}}
	srv := &fasthttp.Server{Handler: a.serve}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return a
}

func (a *shutdownApp) serve(ctx *fasthttp.RequestCtx) {
	if string(ctx.Request.Header.Peek("Cablecar-Upgrade")) == "websocket" {
		ctx.Response.Header.Set("Cablecar-Accept", "websocket")
		events := "open,message,close,shutdown"
		if ctx.QueryArgs().Has("events") {
			events = string(ctx.QueryArgs().Peek("events"))
		}
		ctx.Response.Header.Set("Cablecar-Events", events)
		return
	}
	var body struct {
		Connection struct{ ID string }     `json:"connection"`
		Events     []struct{ Type string } `json:"events"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &body); err != nil {
		ctx.SetStatusCode(400)
		return
	}
	shutdown := false
	a.mu.Lock()
	for _, e := range body.Events {
		a.types[body.Connection.ID] = append(a.types[body.Connection.ID], e.Type)
		shutdown = shutdown || e.Type == "shutdown"
	}
	a.mu.Unlock()
	if !shutdown {
		ctx.SetStatusCode(204)
		return
	}
	if a.hold != nil {
		<-a.hold
	}
	ctx.SetContentType("application/json")
	b, _ := json.Marshal(map[string]any{"send": []string{"bye " + body.Connection.ID}})
	ctx.SetBody(b)
}

func (a *shutdownApp) seen(id string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.types[id]...)
}

// readAll reads what the client gets until the close frame: the messages
// and the close code (0 when the socket ended without one). It may run on
// a goroutine of the test's own.
func readAll(ws *websocket.Conn) ([]string, int) {
	var got []string
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return got, ce.Code
			}
			return got, 0
		}
		got = append(got, string(b))
	}
}

// asFakeApp lets startNode use the app: it needs only its address.
func asFakeApp(a *shutdownApp) *fakeApp { return &fakeApp{addr: a.addr} }

// ids of the node's connections, once there are n of them open.
func connIDs(t *testing.T, n *testNode, want int) []string {
	t.Helper()
	waitFor(t, "the connections", func() bool { return n.server.Hub().Count() == want })
	var ids []string
	for i := range n.server.hub.shards {
		s := &n.server.hub.shards[i]
		s.mu.RLock()
		for k := range s.conns {
			ids = append(ids, k)
		}
		s.mu.RUnlock()
	}
	return ids
}

// shutdownNode shuts the node's WebSockets down and waits for their close
// events, as sidecar's shutdown does.
func shutdownNode(t *testing.T, n *testNode, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := n.server.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := n.cb.Wait(ctx); err != nil {
		t.Fatalf("close events: %v", err)
	}
}

// What the reply to the shutdown event sends arrives before the 1012; a
// connection that did not ask gets no event and only the 1012; the close
// events follow the shutdown event in each stream (SPEC §5).
func TestShutdownEventBeforeClose(t *testing.T) {
	app := startShutdownApp(t, nil)
	n := startNode(t, asFakeApp(app), Config{ShutdownGrace: 5 * time.Second})
	asker, _ := dial(t, n.url+"/")
	other, _ := dial(t, n.url+"/?events=open,message,close")
	ids := connIDs(t, n, 2)
	for _, id := range ids {
		waitFor(t, "open", func() bool { return len(app.seen(id)) > 0 })
	}

	var wg sync.WaitGroup
	var askerGot, otherGot []string
	var askerCode, otherCode int
	wg.Add(2)
	go func() { defer wg.Done(); askerGot, askerCode = readAll(asker) }()
	go func() { defer wg.Done(); otherGot, otherCode = readAll(other) }()
	shutdownNode(t, n, 10*time.Second)
	wg.Wait()

	if len(askerGot) != 1 || askerCode != websocket.CloseServiceRestart {
		t.Errorf("the connection that asked got %q then %d; want its goodbye then 1012", askerGot, askerCode)
	}
	if len(otherGot) != 0 || otherCode != websocket.CloseServiceRestart {
		t.Errorf("the connection that did not ask got %q then %d; want only 1012", otherGot, otherCode)
	}
	for _, id := range ids {
		want := []string{"open", "close"}
		if len(askerGot) == 1 && askerGot[0] == "bye "+id {
			want = []string{"open", "shutdown", "close"}
		}
		if got := app.seen(id); !slices.Equal(got, want) {
			t.Errorf("connection %s: events %v, want %v", id, got, want)
		}
	}
}

// A slow app does not hold the shutdown past the grace: the 1012 comes
// without its goodbye, and the close events are still delivered.
func TestShutdownEventGraceBounds(t *testing.T) {
	hold := make(chan struct{})
	app := startShutdownApp(t, hold)
	const grace = 300 * time.Millisecond
	n := startNode(t, asFakeApp(app), Config{ShutdownGrace: grace})
	ws, _ := dial(t, n.url+"/")
	id := connIDs(t, n, 1)[0]
	waitFor(t, "open", func() bool { return len(app.seen(id)) > 0 })

	done := make(chan struct{})
	var got []string
	var code int
	go func() { defer close(done); got, code = readAll(ws) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := n.server.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// The client answers our close frame at once, so the socket work is
	// quick; what must not happen is a wait for the app.
	if took := time.Since(start); took > grace+3*time.Second {
		t.Errorf("shutdown took %v with a grace of %v: it waited for the app", took, grace)
	}
	<-done
	if len(got) != 0 || code != websocket.CloseServiceRestart {
		t.Errorf("got %q then %d; want only 1012", got, code)
	}
	close(hold) // the app answers at last: too late, its send is dropped
	if err := n.cb.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if s := app.seen(id); !slices.Equal(s, []string{"open", "shutdown", "close"}) {
		t.Errorf("events %v", s)
	}
}

// A grace of 0 means no shutdown events at all.
func TestShutdownGraceZero(t *testing.T) {
	app := startShutdownApp(t, nil)
	n := startNode(t, asFakeApp(app), Config{})
	ws, _ := dial(t, n.url+"/")
	id := connIDs(t, n, 1)[0]
	waitFor(t, "open", func() bool { return len(app.seen(id)) > 0 })
	done := make(chan struct{})
	var got []string
	var code int
	go func() { defer close(done); got, code = readAll(ws) }()
	shutdownNode(t, n, 10*time.Second)
	<-done
	if len(got) != 0 || code != websocket.CloseServiceRestart {
		t.Errorf("got %q then %d", got, code)
	}
	if s := app.seen(id); !slices.Equal(s, []string{"open", "close"}) {
		t.Errorf("events %v: no shutdown event was wanted", s)
	}
}
