package upgrade

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// upgrader turns an accepted handshake into a WebSocket that keeps
// nothing of the HTTP request behind it.
//
// fasthttp hands a hijacked connection over with its request context and
// its 16 KiB read buffer, and keeps both for as long as the hijack handler
// runs; websocket.FastHTTPUpgrader reads the whole life of the connection
// through that buffer. An idle connection would hold them for nothing. So
// the hijack handler takes what fasthttp read past the handshake out of
// its buffer, builds the WebSocket on the bare TCP connection, starts the
// connection's own goroutine and returns, letting fasthttp drop both. For
// this the front server must set KeepHijackedConns (proxy.NewServer does),
// or fasthttp closes the socket when the handler returns.
type upgrader struct {
	ws websocket.Upgrader
}

// readBufferSize is the connection's own read buffer, kept for its life:
// enough for a control frame and a typical message without a second read,
// small enough to cost little on an idle connection. Over 256, or the
// library would allocate one of its own.
const readBufferSize = 512

// wsConn is the socket under a WebSocket, with the buffered reader the
// library reads it through.
type wsConn struct {
	net.Conn
	br *bufio.Reader
	// watch: the socket is the only source of data, so an empty br and a
	// socket with nothing to read mean the client sent nothing yet.
	watch bool
}

func newUpgrader(cfg Config) upgrader {
	return upgrader{ws: websocket.Upgrader{
		HandshakeTimeout: cfg.HandshakeTimeout,
		// 0: the library reads through the hijacked reader, wsConn.br.
		ReadBufferSize: 0,
		// Write buffers are pooled and held only while a message is written.
		WriteBufferSize: 4096,
		WriteBufferPool: &writePool,
		// Origins are checked before the app is asked, by us.
		CheckOrigin: func(*http.Request) bool { return true },
	}}
}

var errNotUpgrade = errors.New("not a WebSocket upgrade request")

// Upgrade writes the 101, with the Set-Cookie and Sec-WebSocket-Protocol
// headers already set on ctx's response, and runs run on a goroutine of its
// own with the connection. checkHandshake has checked the method, version
// and key.
func (u *upgrader) Upgrade(ctx *fasthttp.RequestCtx, run func(*websocket.Conn)) error {
	if !websocket.FastHTTPIsWebSocketUpgrade(ctx) {
		ctx.Error(fasthttp.StatusMessage(fasthttp.StatusBadRequest), fasthttp.StatusBadRequest)
		return errNotUpgrade
	}
	// Copies: ctx is reused once the hijack handler returns.
	req := &http.Request{Method: http.MethodGet, Header: http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {string(ctx.Request.Header.Peek("Sec-WebSocket-Key"))},
	}}
	header := http.Header{}
	for _, v := range ctx.Response.Header.Cookies() {
		header.Add("Set-Cookie", string(v))
	}
	if p := ctx.Response.Header.Peek("Sec-WebSocket-Protocol"); len(p) > 0 {
		header.Set("Sec-WebSocket-Protocol", string(p))
	}
	// The library writes the 101 itself, on the bare connection.
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(hc net.Conn) {
		ws, err := u.complete(hc, req, header)
		if err != nil {
			// The client is gone; the hub's heartbeat forgets the
			// connection after the handshake timeout, as when a 101
			// cannot be written.
			return
		}
		go run(ws)
	})
	return nil
}

func (u *upgrader) complete(hc net.Conn, req *http.Request, header http.Header) (*websocket.Conn, error) {
	raw := hc
	if c, ok := hc.(interface{ UnsafeConn() net.Conn }); ok {
		raw = c.UnsafeConn()
	}
	early, err := drain(hc, raw)
	if err != nil {
		raw.Close()
		return nil, err
	}
	// The connection's read buffer is ours, so that the read loop can see
	// when it is empty (readLoop). A client must wait for the 101 before it
	// sends, but what one sent early is read first.
	var src io.Reader = raw
	if len(early) > 0 {
		src = io.MultiReader(bytes.NewReader(early), raw)
	}
	conn := &wsConn{Conn: raw, br: bufio.NewReaderSize(src, readBufferSize), watch: len(early) == 0}
	w := &hijacked{conn: conn, header: header,
		brw: bufio.NewReadWriter(conn.br, bufio.NewWriterSize(raw, 256))}
	ws, err := u.ws.Upgrade(w, req, header)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return ws, nil
}

// drain returns what fasthttp's buffered reader holds beyond the
// handshake, without waiting for more: with raw's read deadline in the
// past, a read that would reach the socket fails at once and leaves what
// the kernel holds there.
func drain(hc, raw net.Conn) ([]byte, error) {
	if hc == raw {
		return nil, nil
	}
	if err := raw.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return nil, err
	}
	var early []byte
	var buf [512]byte
	for {
		n, err := hc.Read(buf[:])
		early = append(early, buf[:n]...)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return early, raw.SetReadDeadline(time.Time{})
}

// hijacked is the http.ResponseWriter the library's Upgrade hijacks: the
// bare connection, and a reader holding what came early.
type hijacked struct {
	conn   net.Conn
	brw    *bufio.ReadWriter
	header http.Header
}

func (h *hijacked) Header() http.Header { return h.header }

// Write and WriteHeader take only the library's refusals, which cannot
// happen for a handshake checked already; the socket is closed then.
func (h *hijacked) Write(p []byte) (int, error) { return len(p), nil }
func (h *hijacked) WriteHeader(int)             {}

func (h *hijacked) Hijack() (net.Conn, *bufio.ReadWriter, error) { return h.conn, h.brw, nil }
