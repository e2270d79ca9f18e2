package upgrade

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// clientFrame is a masked frame as a client sends it (RFC 6455 §5.3).
func clientFrame(op byte, payload string) []byte {
	key := [4]byte{1, 2, 3, 4}
	f := []byte{0x80 | op, 0x80 | byte(len(payload))}
	f = append(f, key[:]...)
	for i := range len(payload) {
		f = append(f, payload[i]^key[i%4])
	}
	return f
}

// readFrame reads one unmasked server frame of up to 125 bytes.
func readFrame(t *testing.T, r *bufio.Reader) (op byte, payload string) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	p := make([]byte, h[1]&0x7f)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return h[0] & 0x0f, string(p)
}

// A client that sends frames right behind its handshake, before the 101
// (which RFC 6455 forbids but a client may do), has them read: they lie in
// fasthttp's buffer when the connection is hijacked, and the connection is
// built without that buffer.
func TestFramesSentBeforeThe101AreRead(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{PingInterval: time.Minute, PongTimeout: 2 * time.Minute})
	conn, err := net.Dial("tcp", strings.TrimPrefix(n.url, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var out bytes.Buffer
	out.WriteString("GET /chat?sub=room:1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	out.Write(clientFrame(websocket.PingMessage, "early ping"))
	out.Write(clientFrame(websocket.TextMessage, "echo:early"))
	if _, err := conn.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("handshake answered %d %v", resp.StatusCode, resp.Header)
	}
	got := map[byte]string{}
	for len(got) < 2 {
		op, p := readFrame(t, r)
		got[op] = p
	}
	if got[websocket.PongMessage] != "early ping" || got[websocket.TextMessage] != "early" {
		t.Fatalf("frames after the 101: %q", got)
	}
}

// Pings and pongs that reach an idle connection are handled by its idle
// wait (read.go) without the library: a ping is answered with its data, a
// pong counts as a sign of life, and a message behind them in the same
// packet still reaches the app.
func TestIdleConnectionAnswersPings(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{PingInterval: time.Minute, PongTimeout: 2 * time.Minute})
	ws, _ := dial(t, n.url+"/chat?sub=room:1")
	id := onlyConn(t, n)
	app.waitEvent(t, id, func(e map[string]any) bool { return e["type"] == "open" })
	c := n.server.hub.get(id)
	waitFor(t, "the read loop to wait in idle", func() bool {
		return goroutinesIn("upgrade.(*Conn).idle(")["upgrade.(*Conn).idle("] == 1
	})
	seen := c.lastSeen.Load()
	pongs := make(chan string, 4)
	ws.SetPongHandler(func(p string) error { pongs <- p; return nil })
	raw := ws.NetConn()
	var out []byte
	out = append(out, clientFrame(websocket.PongMessage, "")...)
	out = append(out, clientFrame(websocket.PingMessage, "are you there")...)
	out = append(out, clientFrame(websocket.TextMessage, "echo:after")...)
	if _, err := raw.Write(out); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := ws.ReadMessage()
	if err != nil || string(data) != "after" {
		t.Fatalf("message after the control frames: %q, %v", data, err)
	}
	select {
	case p := <-pongs:
		if p != "are you there" {
			t.Fatalf("pong carried %q", p)
		}
	default:
		t.Fatal("no pong before the echo")
	}
	if c.lastSeen.Load() <= seen {
		t.Fatal("the client's frames did not count as signs of life")
	}
}
