package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// What Cablecar does when Redis or a node goes away (SPEC §3 last
// paragraph, §5): Redis down shows in a node's /readyz but neither fails it
// nor drops a client; once Redis is back every node resubscribes by itself;
// a node that dies leaves the close events of its connections to the
// survivors; a node that shuts down sends them itself.

// readyBody is the status and body of GET /readyz, or 0 and the error.
func readyBody(c *Cablecar) (int, string) {
	code, body, err := get(c.admin, c.AdminURL+"/readyz", 5*time.Second)
	if err != nil {
		return 0, err.Error()
	}
	return code, body
}

// echoes fails unless ws is still connected and its app still answers:
// the echo goes through the app, not through Redis.
func echoes(t *testing.T, ws *WSClient, text string) {
	t.Helper()
	ws.Send("echo:" + text)
	ws.ExpectText(wsWait, text)
}

// readUntil reads from ws until the text want, skipping up to 1000 messages
// for which skip is true; anything else fails.
func readUntil(t *testing.T, ws *WSClient, timeout time.Duration, want string, skip func(string) bool) {
	t.Helper()
	for range 1000 {
		kind, data, err := ws.Read(timeout)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if kind == TextMessage && string(data) == want {
			return
		}
		if kind != TextMessage || !skip(string(data)) {
			t.Fatalf("waiting for %q: got %s %.100q", want, kindName(kind), data)
		}
	}
	t.Fatalf("waiting for %q: 1000 other messages first", want)
}

// publishEvery PUBLISHes <prefix><ch> "<tag>-N" every interval, at most max
// times, ignoring errors (Redis may be away), until the returned stop is
// called; stop waits for the goroutine.
func publishEvery(r *Redis, prefix, ch, tag string, interval time.Duration, max int) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := range max {
			_, _ = r.Publish(prefix+ch, []byte(fmt.Sprintf("%s-%d", tag, i)))
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

// liveClient reads its connection in a goroutine of its own, so that it
// answers the server's pings at once whatever the test waits for, and counts
// them. The test then takes messages from it rather than from the WSClient.
type liveClient struct {
	ws    *WSClient
	msgs  chan liveMessage
	pings atomic.Int64
}

type liveMessage struct {
	kind int
	data []byte
	err  error // the read error that ended the connection; last
}

func keepReading(t *testing.T, ws *WSClient) *liveClient {
	lc := &liveClient{ws: ws, msgs: make(chan liveMessage, 1024)}
	ws.Conn.SetPingHandler(func(data string) error {
		lc.pings.Add(1)
		err := ws.Conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(wsTimeout))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		_ = ws.Conn.SetReadDeadline(time.Time{})
		for {
			kind, data, err := ws.Conn.ReadMessage()
			select {
			case lc.msgs <- liveMessage{kind, data, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		ws.Conn.Close()
		<-done
	})
	return lc
}

// next is the next message, failing the test past timeout or if the
// connection ended.
func (lc *liveClient) next(t *testing.T, timeout time.Duration, what string) (int, []byte) {
	t.Helper()
	select {
	case m := <-lc.msgs:
		if m.err != nil {
			t.Fatalf("waiting for %s: the connection ended: %v", what, m.err)
		}
		return m.kind, m.data
	case <-time.After(timeout):
		t.Fatalf("waiting for %s: nothing after %s", what, timeout)
	}
	return 0, nil
}

// expectText fails unless the next message is the text want.
func (lc *liveClient) expectText(t *testing.T, timeout time.Duration, want string) {
	t.Helper()
	if kind, data := lc.next(t, timeout, fmt.Sprintf("%.100q", want)); kind != TextMessage || string(data) != want {
		t.Fatalf("got %s %.100q, want the text %.100q", kindName(kind), data, want)
	}
}

// readUntil takes messages until the text want, skipping up to 1000 for
// which skip is true; anything else fails.
func (lc *liveClient) readUntil(t *testing.T, timeout time.Duration, want string, skip func(string) bool) {
	t.Helper()
	for range 1000 {
		kind, data := lc.next(t, timeout, fmt.Sprintf("%q", want))
		if kind == TextMessage && string(data) == want {
			return
		}
		if kind != TextMessage || !skip(string(data)) {
			t.Fatalf("waiting for %q: got %s %.100q", want, kindName(kind), data)
		}
	}
	t.Fatalf("waiting for %q: 1000 other messages first", want)
}

// echoes fails unless the client is still connected and its app still
// answers it: the echo goes through the app, not through Redis.
func (lc *liveClient) echoes(t *testing.T, text string) {
	t.Helper()
	lc.ws.Send("echo:" + text)
	lc.expectText(t, wsWait, text)
}

// quiet fails if anything arrived that the test did not ask for.
func (lc *liveClient) quiet(t *testing.T, name string) {
	t.Helper()
	select {
	case m := <-lc.msgs:
		t.Fatalf("client %s: unexpected %s %.100q (%v)", name, kindName(m.kind), m.data, m.err)
	default:
	}
}

// TestRedisOutage: Redis stops mid-stream and comes back on the same port,
// empty. No node crashes or drops a client, and heartbeats go on; each node
// reports the broker down in /readyz (still 200) while Redis is away and ok
// after; broadcasts flow again without the clients doing anything; /send
// works again too.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	// Quick heartbeats: a client whose pongs stopped counting would be
	// closed within seconds. The lease outlives the outage: a node cut off
	// for longer gives its connections up (TestRedisLeaseLapseFences).
	nodes := startNodes(t, p, 2, r.URL, map[string]any{"websocket.ping_interval": "1s", "websocket.pong_timeout": "3s",
		"broker.lease_ttl": "60s"})
	ch := channel("outage")
	wsa, _ := joinWS(t, nodes[0], p, "/ws/outage/a", ch)
	wsb, idb := joinWS(t, nodes[1], p, "/ws/outage/b", ch)
	a, b := keepReading(t, wsa), keepReading(t, wsb)
	clients := map[string]*liveClient{"a": a, "b": b}
	publishRaw(t, r, defaultPrefix, ch, []byte("before"))
	a.expectText(t, brokerWait, "before")
	b.expectText(t, brokerWait, "before")

	r.Stop()
	stopped := time.Now()
	pingsAtStop := map[string]int64{"a": a.pings.Load(), "b": b.pings.Load()}
	// A broker outage shows in /readyz but does not fail it (SPEC §5).
	brokerDown := func(body string) bool {
		return strings.Contains(body, "\nbroker: ") && !strings.Contains(body, "\nbroker: ok\n")
	}
	for i, c := range nodes {
		WaitFor(t, 15*time.Second, fmt.Sprintf("/readyz on node %d to report Redis stopped", i), func() bool {
			_, body := readyBody(c)
			return brokerDown(body)
		})
	}
	t.Logf("both nodes report the broker down %s after Redis stopped", time.Since(stopped).Round(time.Millisecond))
	// Four pings (past the 3 s pong timeout) while Redis is away: the
	// heartbeat is the node's own business.
	for name, lc := range clients {
		WaitFor(t, 15*time.Second, "client "+name+" to get 4 pings with Redis away", func() bool {
			return lc.pings.Load() >= pingsAtStop[name]+4
		})
		lc.quiet(t, name)
	}
	for i, c := range nodes {
		if c.Exited() {
			t.Fatalf("node %d exited with Redis away", i)
		}
		if code := c.AdminStatus("/healthz"); code != 200 {
			t.Errorf("node %d: /healthz %d with Redis away; the process itself is fine", i, code)
		}
		if code, body := readyBody(c); code != 200 || !brokerDown(body) {
			t.Errorf("node %d: /readyz %d %q with Redis still away, want 200 saying broker: <error>", i, code, body)
		}
	}
	a.echoes(t, "a during the outage")
	b.echoes(t, "b during the outage")

	r.Restart()
	restarted := time.Now()
	for i, c := range nodes {
		WaitFor(t, 20*time.Second, fmt.Sprintf("/readyz broker: ok on node %d after Redis came back", i), func() bool {
			code, body := readyBody(c)
			return code == 200 && strings.Contains(body, "\nbroker: ok\n")
		})
	}
	t.Logf("both nodes ready %s after Redis came back", time.Since(restarted).Round(time.Millisecond))
	// The outage is on record, for the broadcasts it cost (pub/sub cannot
	// replay them).
	for i, c := range nodes {
		if n := c.Metric("cablecar_broker_disconnects_total"); n < 1 {
			t.Errorf("node %d: cablecar_broker_disconnects_total %v after an outage, want ≥ 1", i, n)
		}
		if d := c.Metric("cablecar_broker_outage_seconds_total"); d <= 0 {
			t.Errorf("node %d: cablecar_broker_outage_seconds_total %v after an outage, want > 0", i, d)
		}
	}

	// The restarted Redis knows no subscription: each node must make its
	// own again. Publish until something arrives (what is published before
	// a node has resubscribed is lost, as pub/sub is).
	isTick := func(s string) bool { return strings.HasPrefix(s, "tick-") }
	stop := publishEvery(r, defaultPrefix, ch, "tick", 100*time.Millisecond, 300)
	for name, lc := range clients {
		kind, data := lc.next(t, 20*time.Second, "client "+name+"'s first broadcast after Redis came back")
		if kind != TextMessage || !isTick(string(data)) {
			stop()
			t.Fatalf("client %s after Redis came back: %s %.100q; want a tick", name, kindName(kind), data)
		}
	}
	stop()
	t.Logf("broadcasts flowing again %s after Redis came back", time.Since(restarted).Round(time.Millisecond))
	if n := publishRaw(t, r, defaultPrefix, ch, []byte("after")); n != 2 {
		t.Errorf("after Redis came back: %d Redis subscribers, want 2 (one per node)", n)
	}
	a.readUntil(t, brokerWait, "after", isTick)
	b.readUntil(t, brokerWait, "after", isTick)
	a.echoes(t, "a after the outage")
	b.echoes(t, "b after the outage")

	// /send across nodes again. The restarted Redis lost whatever the nodes
	// kept there, so allow them a lease period to write it again.
	var code int
	var body string
	if !poll(leaseTTL+8*time.Second, func() bool {
		code, body = AdminPost(t, nodes[0], "/send", map[string]any{"connection": idb, "data": "sent after the outage"}, "")
		return code >= 200 && code < 300
	}) {
		t.Errorf("/send from node 0 to b on node 1 after Redis came back: %d %q", code, body)
	} else {
		b.expectText(t, brokerWait, "sent after the outage")
	}

	// (That a node lost after such a restart is still noticed is
	// TestRedisLeaseLapseFences's last step.)
}

// nodeLostClient is a client of the node about to be killed, with what its
// close event should look like.
type nodeLostClient struct {
	ws         *WSClient
	id         string
	eventsPath string // where its events go: its handshake's path and query unless set
	state      string
	channels   []string
}

// TestRedisNodeLost: a node killed with clients connected; within the
// lease and a sweep the app gets the close event of each, by node_lost,
// from a survivor, exactly once, at the connection's own events path.
func TestRedisNodeLost(t *testing.T) {
	t.Parallel()
	const prefix = "nl:"
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 3, r.URL, map[string]any{"broker.prefix": prefix})

	// The prefix is honoured; the default one is not used.
	ch := channel("lost")
	m1, idm1 := joinWS(t, nodes[1], p, "/ws/lost/m1", ch)
	if n := publishRaw(t, r, prefix, ch, []byte("prefixed")); n != 1 {
		t.Errorf("PUBLISH %s%s: %d Redis subscribers, want 1", prefix, ch, n)
	}
	m1.ExpectText(brokerWait, "prefixed")
	if n := numSub(t, r, defaultPrefix, ch); n != 0 {
		t.Errorf("with broker.prefix %q, %s%s has %d Redis subscribers", prefix, defaultPrefix, ch, n)
	}
	_, idm2 := joinWS(t, nodes[2], p, "/ws/lost/m2")

	// Three clients of node 0, each with events going somewhere else.
	var victims []nodeLostClient
	for i, tc := range []struct{ target, eventsPath, state string }{
		{target: target("/ws/lost/v1", "subscribe", ch, "state", "s1"), state: "s1"},
		{target: target("/ws/lost/v2", "x", "1 2"), eventsPath: "/ws/lost-elsewhere/v2?y=1"},
		{target: "/ws/lost/v3"},
	} {
		tgt := tc.target
		if tc.eventsPath != "" {
			tgt = WithQuery(tgt, "events_path", tc.eventsPath)
		}
		ws, _, id := ConnectWSResp(t, nodes[0], p, WithQuery(tgt, "first", "ready"), nil)
		ws.ExpectText(wsWait, "ready")
		echoes(t, ws, fmt.Sprintf("v%d alive", i+1))
		path := tc.eventsPath
		if path == "" {
			path = AppLog(t, p, id).Accepts[0].PathAndQuery()
		}
		var chans []string
		if i == 0 {
			chans = []string{ch}
		}
		victims = append(victims, nodeLostClient{ws: ws, id: id, eventsPath: path, state: tc.state, channels: chans})
	}
	publishRaw(t, r, prefix, ch, []byte("to v1 and m1"))
	victims[0].ws.ExpectText(brokerWait, "to v1 and m1")
	m1.ExpectText(brokerWait, "to v1 and m1")

	// Each node counts its own connections only.
	for i, want := range []float64{3, 1, 1} {
		WaitFor(t, wsWait, fmt.Sprintf("cablecar_connections %v on node %d", want, i), func() bool {
			return nodes[i].Metric("cablecar_connections") == want
		})
	}

	killed := time.Now()
	nodes[0].Kill()
	for _, v := range victims {
		// The socket just breaks: a dead process sends no close frame.
		// (The library reports a socket that just ended as 1006.)
		if code, reason, err := v.ws.ReadClose(wsWait); err == nil && code != websocket.CloseAbnormalClosure {
			t.Errorf("%s: a close frame %d %q from a killed node", v.id, code, reason)
		}
	}
	for _, v := range victims {
		l := waitCloseBatch(t, p, v.id, time.Until(killed.Add(nodeLostWait)))
		t.Logf("%s: close event %s after the kill", v.id, time.Since(killed).Round(time.Millisecond))
		checkNodeLostClose(t, v, l)
	}

	// A later loss is the marker that the survivors have swept again since:
	// any second close event for node 0's connections would be here by now.
	killed2 := time.Now()
	nodes[2].Kill()
	l := waitCloseBatch(t, p, idm2, nodeLostWait)
	if ev := closeEventsIn(closeBatches(l)); ev[0].By != "node_lost" {
		t.Errorf("close event of m2 after its node died: %v, want by node_lost", ev[0])
	}
	t.Logf("second loss: close event %s after the kill", time.Since(killed2).Round(time.Millisecond))
	for _, v := range victims {
		if n := len(closeBatches(AppLog(t, p, v.id))); n != 1 {
			t.Errorf("%s: %d POSTs with a close event after a later sweep, want exactly 1: %v", v.id, n, AppLog(t, p, v.id).Events())
		}
	}

	// The survivor's own client never got a close event, and is fine.
	echoes(t, m1, "m1 alive")
	if l := AppLog(t, p, idm1); len(closeBatches(l)) != 0 {
		t.Errorf("m1 on the surviving node got close events: %v", l.Events())
	}
	publishRaw(t, r, prefix, ch, []byte("to m1 only"))
	m1.ExpectText(brokerWait, "to m1 only")
	if n := nodes[1].Metric("cablecar_connections"); n != 1 {
		t.Errorf("cablecar_connections on the survivor: %v, want 1 (its own client only)", n)
	}
	// The dead nodes' subscriptions went with their Redis connections.
	if chans, err := appChannels(r, prefix); err != nil || !slices.Equal(chans, []string{ch}) {
		t.Errorf("PUBSUB CHANNELS %s* (internal ones left out): %q, %v; want only %q", prefix, chans, err, ch)
	}
}

// checkNodeLostClose checks the app's record of a connection whose node
// was killed: one POST with a close event by node_lost, at its events path,
// about it, with an event id of its own.
func checkNodeLostClose(t *testing.T, v nodeLostClient, l WSAppLog) {
	t.Helper()
	batches := closeBatches(l)
	if len(batches) != 1 {
		t.Errorf("%s: %d POSTs with a close event, want 1: %v", v.id, len(batches), l.Events())
	}
	b := batches[0]
	ev := closeEventsIn(batches)[0]
	if ev.By != "node_lost" {
		t.Errorf("%s: close event %v, want by node_lost", v.id, ev)
	}
	t.Logf("%s: node_lost close event %v", v.id, ev)
	if got := b.PathAndQuery(); got != v.eventsPath {
		t.Errorf("%s: close event POSTed to %q, want the events path %q", v.id, got, v.eventsPath)
	}
	if b.Method != http.MethodPost {
		t.Errorf("%s: close event sent with %s", v.id, b.Method)
	}
	if h, _ := b.Header("Cablecar-Connection-Id"); h != v.id {
		t.Errorf("%s: close event with Cablecar-Connection-Id %q", v.id, h)
	}
	if b.Body.Connection.ID != v.id {
		t.Errorf("%s: close event about connection %q", v.id, b.Body.Connection.ID)
	}
	if !strings.HasPrefix(ev.ID, v.id+":") {
		t.Errorf("%s: close event id %q, want %s:<n>", v.id, ev.ID, v.id)
	}
	if c, ok := l.Close(); !ok || c.ID != ev.ID {
		t.Errorf("%s: close event id %q repeats an earlier event's id, so an app dropping duplicates loses it; events %v",
			v.id, ev.ID, l.Events())
	}
	state := ""
	if b.Body.Connection.State != nil {
		state = *b.Body.Connection.State
	}
	if state != v.state {
		t.Errorf("%s: close event with state %q, want %q (the state is echoed on every later webhook)", v.id, state, v.state)
	}
	if strings.Join(b.Body.Connection.Channels, ",") != strings.Join(v.channels, ",") {
		t.Errorf("%s: close event with channels %q, want %q", v.id, b.Body.Connection.Channels, v.channels)
	}
}

// TestRedisShutdown: a node stopped by SIGTERM closes its clients with
// 1012 and sends their close events itself (by shutdown); no survivor
// reports them lost later.
func TestRedisShutdown(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 3, r.URL, map[string]any{"shutdown_timeout": "10s"})
	ch := channel("term")
	s1, ids1 := joinWS(t, nodes[0], p, "/ws/term/s1", ch)
	s2, ids2 := joinWS(t, nodes[0], p, "/ws/term/s2")
	m1, idm1 := joinWS(t, nodes[1], p, "/ws/term/m1", ch)
	_, idm2 := joinWS(t, nodes[2], p, "/ws/term/m2")
	echoes(t, s1, "s1 alive")
	echoes(t, s2, "s2 alive")

	nodes[0].Signal(syscall.SIGTERM)
	s1.ExpectCloseCode(15*time.Second, 1012)
	s2.ExpectCloseCode(15*time.Second, 1012)
	if code, err := nodes[0].Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("node 0 after SIGTERM: exit %d, %v; want 0", code, err)
	}
	for _, id := range []string{ids1, ids2} {
		if ev := WaitCloseEvent(t, p, id, wsWait); ev.By != "shutdown" {
			t.Errorf("%s: close event %v, want by shutdown", id, ev)
		}
	}
	// Node 0 is gone from Redis with its subscriptions.
	if n := publishRaw(t, r, defaultPrefix, ch, []byte("after node 0")); n != 1 {
		t.Errorf("after node 0 stopped: %d Redis subscribers of %s, want 1", n, ch)
	}
	m1.ExpectText(brokerWait, "after node 0")
	if chans, err := appChannels(r, defaultPrefix); err != nil || !slices.Equal(chans, []string{ch}) {
		t.Errorf("PUBSUB CHANNELS after node 0 stopped (internal ones left out): %q, %v; want only %q", chans, err, ch)
	}

	// The marker: a node lost after node 0's lease would have lapsed is
	// reported; by then a wrong node_lost for node 0's clients would be too.
	nodes[2].Kill()
	l := waitCloseBatch(t, p, idm2, nodeLostWait)
	if ev := closeEventsIn(closeBatches(l)); ev[0].By != "node_lost" {
		t.Errorf("close event of m2 after its node died: %v, want by node_lost", ev[0])
	}
	for _, id := range []string{ids1, ids2} {
		l := AppLog(t, p, id)
		if evs := closeEventsIn(closeBatches(l)); len(evs) != 1 {
			t.Errorf("%s: close events %v, want exactly one, by shutdown", id, evs)
		}
	}
	echoes(t, m1, "m1 alive")
	if l := AppLog(t, p, idm1); len(closeBatches(l)) != 0 {
		t.Errorf("m1 on the surviving node got close events: %v", l.Events())
	}
}

// TestRedisLeaseLapseFences: Redis away for longer than lease_ttl. Each
// node must assume it was taken for lost, so it closes its clients with
// 1012 rather than keep connections the app may have been told are gone;
// and since every node was cut off, nobody else sent their close events:
// each node sends them itself (by: node_lost) once Redis is back, even
// though Redis came back empty. Exactly one close event per connection.
func TestRedisLeaseLapseFences(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 2, r.URL, map[string]any{"websocket.ping_interval": "1s", "websocket.pong_timeout": "30s"})
	ch := channel("fence")
	wsa, ida := joinWS(t, nodes[0], p, "/ws/fence/a", ch)
	wsb, idb := joinWS(t, nodes[1], p, "/ws/fence/b", ch)
	a, b := keepReading(t, wsa), keepReading(t, wsb)

	r.Stop()
	for name, lc := range map[string]*liveClient{"a": a, "b": b} {
		select {
		case m := <-lc.msgs:
			var ce *websocket.CloseError
			if !errors.As(m.err, &ce) || ce.Code != websocket.CloseServiceRestart {
				t.Fatalf("client %s with Redis away past the lease: %s %.60q %v; want close 1012", name, kindName(m.kind), m.data, m.err)
			}
		case <-time.After(leaseTTL + 10*time.Second):
			t.Fatalf("client %s still open %s after Redis went away (lease_ttl %s)", name, leaseTTL+10*time.Second, leaseTTL)
		}
	}
	r.Restart()
	for _, id := range []string{ida, idb} {
		l := waitCloseBatch(t, p, id, 20*time.Second)
		evs := closeEventsIn(closeBatches(l))
		if evs[0].By != "node_lost" {
			t.Errorf("%s: close event %v, want by node_lost", id, evs[0])
		}
	}
	// A later marker: node 1 dies, node 0 reports it. By then a second
	// close of a or b would have arrived too.
	wsc, idc := joinWS(t, nodes[1], p, "/ws/fence/c", ch)
	_ = wsc
	nodes[1].Kill()
	waitCloseBatch(t, p, idc, nodeLostWait)
	for _, id := range []string{ida, idb} {
		if n := len(closeEventsIn(closeBatches(AppLog(t, p, id)))); n != 1 {
			t.Errorf("%s: %d close events, want exactly 1", id, n)
		}
	}
}
