package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// What a hostile or broken client cannot do to a node (SPEC §5): hold more
// than a bounded amount of memory by not reading what its own messages make
// the app send back, flood the node with control frames, or make an accept
// wait for a broker that is away.

func TestWSHardening(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	e := &wsEnv{p: p}
	for name, test := range map[string]func(*testing.T, *wsEnv){
		"SlowReaderMemoryBounded": hardenSlowReaderMemory,
		"PingFlood":               func(t *testing.T, e *wsEnv) { hardenControlFlood(t, e, websocket.PingMessage) },
		"PongFlood":               func(t *testing.T, e *wsEnv) { hardenControlFlood(t, e, websocket.PongMessage) },
		"AcceptWhileRedisDown":    hardenAcceptWhileRedisDown,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t, e)
		})
	}
}

// hardenSlowReaderMemory: a client sends 900 KB messages that the app
// echoes and never reads a byte. Its send queue fills in bytes long before
// it fills in messages: it is closed 1008 by slow, and the node's memory
// stays within a bound that has nothing to do with how much it sent. (Before
// the queue was bounded in bytes, this grew the node by ~380 MB.)
func hardenSlowReaderMemory(t *testing.T, e *wsEnv) {
	// No rate limit: the client is to be closed for what it does not read,
	// not for how fast it writes.
	c := e.cablecar(t, map[string]any{"websocket.rate_limit.per_second": 0})
	d := &websocket.Dialer{ReadBufferSize: 1024, NetDialContext: (&net.Dialer{Control: smallReceiveBuffer}).DialContext}
	tag := NewTag(t)
	ws, resp, err := DialWSWith(t, d, c.URL+target("/ws/chat/hoard", "tag", tag), nil)
	if err != nil {
		t.Fatalf("handshake: %v%s", err, describeResponse(resp))
	}
	id := ConnID(t, e.p, tag)
	WaitOpen(t, e.p, id, wsWait)
	base := procStatusKB(t, c.PID(), "VmRSS")

	msg := []byte("echo:" + strings.Repeat("m", 900<<10))
	sent := 0
	var sendErr error
	for ; sent < 300; sent++ {
		if sendErr = ws.TrySend(TextMessage, msg); sendErr != nil {
			break
		}
	}
	// The app's record of 900 KB messages is more than the harness reads
	// of it: the node's log line of the close says what its close event says.
	closed := c.WaitLog(30*time.Second, "the close of "+id, func(l LogLine) bool {
		return l.Str("message") == "websocket closed" && l.Str("conn_id") == id
	})
	peak := procStatusKB(t, c.PID(), "VmHWM")
	grew := (peak - base) >> 10
	code, _ := closed.Num("code")
	t.Logf("sent %d messages of 900 KB (then %v); closed %v by %s; RSS %d MiB before, peak %d MiB (+%d MiB)",
		sent, sendErr, code, closed.Str("by"), base>>10, peak>>10, grew)
	if closed.Str("by") != "slow" || code != 1008 {
		t.Errorf("closed %v by %q, want 1008 by slow", code, closed.Str("by"))
	}
	// What the connection holds is a few MiB (the queue, the webhook in
	// flight and the one waiting, the reply); the rest is the collector's
	// headroom, and under -race the detector's shadow of it all.
	bound := int64(64)
	if raceEnabled {
		bound = 128
	}
	if grew > bound {
		t.Errorf("one client that never reads grew the node by %d MiB, more than %d; want its memory bounded (send_queue_bytes 1MiB)", grew, bound)
	}
}

// hardenControlFlood: a client that sends nothing but pings (or unasked
// pongs) is held to websocket.rate_limit like one that floods messages:
// closed 1008, by rate_limit.
func hardenControlFlood(t *testing.T, e *wsEnv, kind int) {
	c := e.cablecar(t, map[string]any{"websocket.rate_limit": map[string]any{"per_second": 10, "burst": 20}})
	ws, id := ConnectWS(t, c, e.p, "/ws/chat/controlflood", nil)
	WaitOpen(t, e.p, id, wsWait)
	msgs, errs := readInBackground(ws)
	go func() {
		for range msgs {
		}
	}()
	// Far past the burst; the flood stops when the node closes the socket.
	sent := 0
	for ; sent < 20000; sent++ {
		if err := ws.Conn.WriteControl(kind, []byte("flood"), time.Now().Add(wsTimeout)); err != nil {
			break
		}
	}
	flooded := time.Now()
	var err error
	select {
	case err = <-errs:
		t.Logf("%d control frames sent; connection ended %s later", sent, time.Since(flooded).Round(time.Millisecond))
	case <-time.After(wsWait):
		t.Fatalf("%d control frames past a burst of 20 and the connection is still open", sent)
	}
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1008 {
		t.Errorf("after %d control frames the connection ended with %v, want close 1008", sent, err)
	}
	if ev := WaitCloseEvent(t, e.p, id, wsWait); ev.By != "rate_limit" || ev.Code != 1008 {
		t.Errorf("close event %v, want 1008 by rate_limit", ev)
	}
	t.Logf("close event %s after the flood", time.Since(flooded).Round(time.Millisecond))
}

// hardenAcceptWhileRedisDown: with Redis stopped a handshake is accepted,
// subscriptions and all, and the client's first message reaches the app at
// once rather than after the broker's 5 s timeout; once Redis is back the
// connection gets the channel's broadcasts without doing anything.
func hardenAcceptWhileRedisDown(t *testing.T, e *wsEnv) {
	r := StartRedis(t)
	nodes := startNodes(t, e.p, 1, r.URL, nil)
	c := nodes[0]
	ch := channel("redisdown")

	r.Stop()
	WaitFor(t, 15*time.Second, "the node to see Redis gone", func() bool {
		return c.Metric("cablecar_broker_connected") == 0
	})

	for _, tc := range []struct{ name, target string }{
		{"plain", "/ws/chat/redisdown-plain"},
		{"subscribed", target("/ws/chat/redisdown-sub", "subscribe", ch)},
	} {
		start := time.Now()
		tag := NewTag(t)
		ws, resp, err := DialWS(t, c.URL+WithQuery(tc.target, "tag", tag), nil)
		if err != nil {
			t.Fatalf("%s: handshake with Redis down: %v%s", tc.name, err, describeResponse(resp))
		}
		id := ConnID(t, e.p, tag)
		ws.Send("echo:first " + tc.name)
		// A contract deadline with a margin: well under the broker's 5 s.
		WaitMessages(t, e.p, id, 3*time.Second-time.Since(start), 1)
		t.Logf("%s: first message at the app %s after dialling, with Redis down",
			tc.name, time.Since(start).Round(time.Millisecond))
		ws.ExpectText(wsWait, "first "+tc.name)
		if tc.name != "subscribed" {
			continue
		}

		r.Restart()
		isTick := func(s string) bool { return strings.HasPrefix(s, "tick-") }
		stop := publishEvery(r, defaultPrefix, ch, "tick", 100*time.Millisecond, 300)
		kind, data, err := ws.Read(20 * time.Second)
		stop()
		if err != nil || kind != TextMessage || !isTick(string(data)) {
			t.Fatalf("after Redis came back: %s %.100q, %v; want a broadcast", kindName(kind), data, err)
		}
		if n := publishRaw(t, r, defaultPrefix, ch, []byte("after")); n != 1 {
			t.Errorf("after Redis came back: %d Redis subscribers of %s, want 1", n, ch)
		}
		readUntil(t, ws, brokerWait, "after", isTick)
	}
}

// procStatusKB is a field of /proc/<pid>/status given in kB (VmRSS, VmHWM).
func procStatusKB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/status %s: %v", pid, field, err)
		}
		return v
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}
