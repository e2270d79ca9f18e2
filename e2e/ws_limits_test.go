package e2e

import (
	"bytes"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// Keeping connections honest (SPEC §5): size, UTF-8 and rate limits, the
// heartbeat, and backpressure on slow clients.
//
// These are the group TestWebSocket/Limits (see websocket_test.go); run one
// test, here testLimitsHeartbeat, with
//
//	go test -race -count=1 -run 'TestWebSocket/Limits/Heartbeat$' ./e2e/

// wsLimitTests are TestWebSocket/Limits/<name>, each the function
// testLimits<name>; they start in this order and run in parallel.
var wsLimitTests = []wsTest{
	{"Messages", testLimitsMessages},
	{"ProtocolErrors", testLimitsProtocolErrors},
	{"FragmentedMessage", testLimitsFragmentedMessage},
	{"ClientPingAnswered", testLimitsClientPingAnswered},
	{"Heartbeat", testLimitsHeartbeat},
	{"SlowClient", testLimitsSlowClient},
}

func testLimitsMessages(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{
		"websocket.max_message_size": "1KiB",
		"websocket.rate_limit":       map[string]any{"per_second": 1, "burst": 2},
	})
	t.Run("TooBig", func(t *testing.T) {
		t.Parallel()
		ws, id := ConnectWS(t, c, e.p, "/ws/chat/toobig", nil)
		fits := strings.Repeat("a", 1024-len("echo:")) // exactly max_message_size
		ws.Send("echo:" + fits)
		ws.ExpectText(wsWait, fits)
		_ = ws.TrySend(TextMessage, []byte(strings.Repeat("b", 2048)))
		ws.ExpectCloseCode(wsWait, 1009)
		if ev := WaitCloseEvent(t, e.p, id, wsWait); ev.By != "too_big" || ev.Code != 1009 {
			t.Errorf("close event %v, want 1009 by too_big", ev)
		}
		if msgs := AppLog(t, e.p, id).Messages(); len(msgs) != 1 {
			t.Errorf("the app got %d messages, want only the one that fits", len(msgs))
		}
	})
	t.Run("InvalidUTF8", func(t *testing.T) {
		t.Parallel()
		ws, id := ConnectWS(t, c, e.p, "/ws/chat/utf8", nil)
		_ = ws.TrySend(TextMessage, []byte{'o', 'k', 0xff, 0xfe})
		ws.ExpectCloseCode(wsWait, 1007)
		if ev := WaitCloseEvent(t, e.p, id, wsWait); ev.By != "protocol" || ev.Code != 1007 {
			t.Errorf("close event %v, want 1007 by protocol", ev)
		}
		if msgs := AppLog(t, e.p, id).Messages(); len(msgs) != 0 {
			t.Errorf("the app got the invalid text: %q", msgs)
		}
	})
	t.Run("RateLimit", func(t *testing.T) {
		t.Parallel()
		ws, id := ConnectWS(t, c, e.p, "/ws/chat/rate", nil)
		for range 10 {
			if err := ws.TrySend(TextMessage, []byte("nothing")); err != nil {
				break // closed already
			}
		}
		ws.ExpectCloseCode(wsWait, 1008)
		if ev := WaitCloseEvent(t, e.p, id, wsWait); ev.By != "rate_limit" || ev.Code != 1008 {
			t.Errorf("close event %v, want 1008 by rate_limit", ev)
		}
		if msgs := AppLog(t, e.p, id).Messages(); len(msgs) > 3 {
			t.Errorf("the app got %d of 10 messages past a burst of 2", len(msgs))
		}
	})
}

// Frames RFC 6455 forbids close the connection with 1002, by protocol.
func testLimitsProtocolErrors(t *testing.T, e *wsEnv) {
	for _, tc := range []struct {
		name  string
		frame RawFrame
	}{
		{"unmasked", RawFrame{First: 0x81, Payload: []byte("hi"), Unmasked: true}},
		{"RSV1 without an extension", RawFrame{First: 0xc1, Payload: []byte("hi")}},
		{"unknown opcode", RawFrame{First: 0x83, Payload: []byte("hi")}},
		{"continuation first", RawFrame{First: 0x80, Payload: []byte("hi")}},
		{"fragmented ping", RawFrame{First: 0x09, Payload: []byte("hi")}},
		{"ping of 126 bytes", RawFrame{First: 0x89, Payload: bytes.Repeat([]byte("p"), 126)}},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			tag := NewTag(t)
			conn, resp := RawHandshake(t, e.c.Addr, target("/ws/chat/protoerr", "tag", tag))
			if resp.StatusCode != 101 {
				t.Fatalf("handshake: %d", resp.StatusCode)
			}
			id := ConnID(t, e.p, tag)
			if err := WriteRawFrame(conn, tc.frame); err != nil {
				t.Fatal(err)
			}
			code, reason, err := ReadRawClose(conn, wsWait)
			if err != nil || code != 1002 {
				t.Errorf("got close %d %q (%v), want 1002", code, reason, err)
			}
			if ev := WaitCloseEvent(t, e.p, id, wsWait); ev.By != "protocol" {
				t.Errorf("close event %v, want by protocol", ev)
			}
		})
	}
}

// A message sent in many frames reaches the app whole.
func testLimitsFragmentedMessage(t *testing.T, e *wsEnv) {
	tag := NewTag(t)
	d := &websocket.Dialer{WriteBufferSize: 256}
	ws, resp, err := DialWSWith(t, d, e.c.URL+target("/ws/chat/fragments", "tag", tag), nil)
	if err != nil {
		t.Fatalf("handshake: %v%s", err, describeResponse(resp))
	}
	id := ConnID(t, e.p, tag)
	long := strings.Repeat("0123456789", 300)
	ws.Send("echo:" + long)
	ws.ExpectText(wsWait, long)
	if msgs := AppLog(t, e.p, id).Messages(); len(msgs) != 1 || msgs[0] != "echo:"+long {
		t.Errorf("the app got %d messages for one sent in fragments", len(msgs))
	}
}

// A ping from the client is answered with a pong carrying its data.
func testLimitsClientPingAnswered(t *testing.T, e *wsEnv) {
	ws, _ := ConnectWS(t, e.c, e.p, "/ws/chat/clientping", nil)
	pongs := make(chan string, 4)
	ws.Conn.SetPongHandler(func(data string) error {
		pongs <- data
		return nil
	})
	_, errs := readInBackground(ws)
	if err := ws.Conn.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(wsWait)); err != nil {
		t.Fatal(err)
	}
	select {
	case data := <-pongs:
		if data != "are you there" {
			t.Errorf("pong %q, want the ping's data", data)
		}
	case err := <-errs:
		t.Fatalf("closed: %v", err)
	case <-time.After(wsWait):
		t.Fatal("no pong")
	}
}

func testLimitsHeartbeat(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"websocket.ping_interval": "200ms", "websocket.pong_timeout": "1s"})
	// A client that answers pings stays open well past pong_timeout.
	t.Run("Alive", func(t *testing.T) {
		t.Parallel()
		ws, id := ConnectWS(t, c, e.p, "/ws/chat/alive", nil)
		var pings, pongs atomic.Int32
		var pongErr atomic.Value
		ws.Conn.SetPingHandler(func(data string) error {
			pings.Add(1)
			err := ws.Conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
			if err != nil {
				pongErr.Store(err)
			} else {
				pongs.Add(1)
			}
			return err
		})
		start := time.Now()
		msgs, errs := readInBackground(ws)
		// Not a pause to let things settle: staying open for this long
		// is what is tested.
		select {
		case err := <-errs:
			t.Fatalf("a client answering pings was closed after %s (%d pings, %d pongs sent, pong error %v): %v",
				time.Since(start).Round(time.Millisecond), pings.Load(), pongs.Load(), pongErr.Load(), err)
		case <-time.After(2500 * time.Millisecond):
		}
		if n := pings.Load(); n < 5 {
			t.Errorf("%d pings in 2.5 s with ping_interval 200ms", n)
		}
		ws.Send("echo:alive")
		select {
		case m := <-msgs:
			if m != "alive" {
				t.Fatalf("got %q, want alive", m)
			}
		case err := <-errs:
			t.Fatalf("closed: %v", err)
		case <-time.After(wsWait):
			t.Fatal("no echo")
		}
		if _, closed := AppLog(t, e.p, id).Close(); closed {
			t.Fatal("the app got a close event for a live client")
		}
	})
	// A client that does the handshake and then neither reads nor writes
	// is closed once pong_timeout passes with nothing from it.
	t.Run("HalfOpen", func(t *testing.T) {
		t.Parallel()
		tag := NewTag(t)
		_, resp := RawHandshake(t, c.Addr, target("/ws/chat/halfopen", "tag", tag))
		start := time.Now()
		if resp.StatusCode != 101 {
			t.Fatalf("handshake: %d", resp.StatusCode)
		}
		id := ConnID(t, e.p, tag)
		ev := WaitCloseEvent(t, e.p, id, 8*time.Second)
		elapsed := time.Since(start)
		t.Logf("half-open client: close event %v after %s", ev, elapsed.Round(time.Millisecond))
		if ev.By != "timeout" {
			t.Errorf("close event %v, want by timeout", ev)
		}
		if elapsed < 900*time.Millisecond {
			t.Errorf("closed after %s, before pong_timeout (1s)", elapsed)
		}
	})
}

// A client that reads nothing while much is published to it is closed
// as slow; another client on the same channel gets everything.
func testLimitsSlowClient(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"websocket.send_queue": 4})
	ch := channel("flood")

	// A small receive buffer so the kernel absorbs little of the flood.
	d := &websocket.Dialer{ReadBufferSize: 1024, NetDialContext: (&net.Dialer{Control: smallReceiveBuffer}).DialContext}
	tag := NewTag(t)
	if _, resp, err := DialWSWith(t, d, c.URL+target("/ws/chat/slow", "subscribe", ch, "tag", tag), nil); err != nil {
		t.Fatalf("slow client handshake: %v%s", err, describeResponse(resp))
	}
	slowID := ConnID(t, e.p, tag)
	fast, fastID := ConnectWS(t, c, e.p, target("/ws/chat/fast", "subscribe", ch), nil)
	for _, id := range []string{slowID, fastID} {
		WaitOpen(t, e.p, id, wsWait)
	}
	var got atomic.Int64
	msgs, errs := readInBackground(fast)
	go func() {
		for range msgs {
			got.Add(1)
		}
	}()

	// Publish until Cablecar gives up on the slow client: it counts the
	// message it could not queue at once, while the close event waits
	// for the close handshake's time limit.
	payload := strings.Repeat("x", 64<<10)
	published := 0
	for i := 0; i < 400 && c.Metric(wsQueueDropped) == 0; i++ {
		MustAdminPost(t, c, "/publish", map[string]any{"channel": ch, "data": payload}, "")
		published++
		select {
		case err := <-errs:
			t.Fatalf("the fast client was closed after %d messages: %v", published, err)
		default:
		}
	}
	gaveUp := time.Now()
	ev := WaitCloseEvent(t, e.p, slowID, 15*time.Second)
	t.Logf("slow client given up after %d messages of 64 KiB; close event %s later: %v",
		published, time.Since(gaveUp).Round(time.Millisecond), ev)
	if ev.By != "slow" {
		t.Errorf("close event %v, want by slow", ev)
	}
	if ev.Code != 0 && ev.Code != 1008 {
		t.Errorf("close event %v, want code 1008", ev)
	}
	MustAdminPost(t, c, "/publish", map[string]any{"channel": ch, "data": "after"}, "")
	published++
	WaitFor(t, 10*time.Second, "the fast client to get every message", func() bool { return got.Load() == int64(published) })
	select {
	case err := <-errs:
		t.Fatalf("the fast client was closed: %v", err)
	default:
	}
	if _, closed := AppLog(t, e.p, fastID).Close(); closed {
		t.Fatal("the fast client was closed too")
	}
}

// readInBackground reads data messages into the first channel until the
// connection ends, then sends the error on the second. It stops when the
// connection is closed (at the latest when the test ends).
func readInBackground(ws *WSClient) (<-chan string, <-chan error) {
	msgs := make(chan string, 1024)
	errs := make(chan error, 1)
	go func() {
		defer close(msgs)
		for {
			_ = ws.Conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			_, data, err := ws.Conn.ReadMessage()
			if err != nil {
				errs <- err
				return
			}
			msgs <- string(data)
		}
	}()
	return msgs, errs
}

// smallReceiveBuffer sets SO_RCVBUF before connect, when it still bounds
// the window the peer may fill.
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
