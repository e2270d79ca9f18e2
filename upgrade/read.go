package upgrade

import (
	"errors"
	"io"
	"net"
	"time"
	"unicode/utf8"

	"github.com/fasthttp/websocket"

	"github.com/cablecar/cablecar/callback"
)

// The read side: the connection's read loop, and the limits on what a
// client may send (SPEC §5).

// setHandlers installs the handlers of the frames ReadMessage deals with
// itself. They run in the read loop's goroutine, inside ReadMessage.
func (c *Conn) setHandlers(ws *websocket.Conn) {
	// No read limit for the library: readMessage enforces it (readlimit.go).
	// Control frames never come out of ReadMessage, so they are counted
	// here: as signs of life, and against the rate limit, or a client
	// could flood the node with pings at no cost to itself.
	ws.SetPongHandler(func(string) error {
		c.control()
		return nil
	})
	ws.SetPingHandler(func(data string) error {
		if c.control() {
			// The pong goes through the writer: one goroutine writes.
			c.queuePong(data)
		}
		return nil
	})
	ws.SetCloseHandler(c.closeHandler(ws))
}

// control accounts for a ping or pong from the client, and reports whether
// the connection goes on (false once it is ending, or now closed for going
// over the rate limit).
func (c *Conn) control() bool {
	now := time.Now().UnixNano()
	c.lastSeen.Store(now)
	if c.ending() {
		return false
	}
	if c.hub.cfg.RatePerSecond > 0 && !c.allow(now) {
		c.closeWith(websocket.ClosePolicyViolation, "rate limit exceeded", ByRateLimit)
		return false
	}
	return true
}

// readLoop reads what the client sends until the connection ends, then
// tears it down.
//
// An idle connection waits on a goroutine of its own that has never
// handled a frame: reading one grows a goroutine's stack to 8 KiB, which
// the runtime would keep until a garbage collection shrinks it, so a
// connection that answered a ping a second ago would still hold it. So
// once what arrived is read and the read buffer is empty, the loop hands
// the wait to a new goroutine, with the smallest stack, and ends.
func (c *Conn) readLoop(ws *websocket.Conn) {
	for {
		if !c.readOne(ws) {
			c.teardown()
			return
		}
		if c.watch && c.br.Buffered() == 0 {
			go c.wait()
			return
		}
	}
}

// idle waits until the client sends, answering on the way the pings and
// pongs that arrive between messages (the heartbeat's traffic), and hands
// anything else to readLoop on this goroutine.
func (c *Conn) idle(ws *websocket.Conn) {
	for c.br.Buffered() == 0 {
		// Parked in the socket's read, on this goroutine's small stack: a
		// read that finds nothing waits in the runtime's poller, and the
		// bytes come into the buffer in the same read that returns. An
		// error (the socket cut by the heartbeat, or closed) is seen
		// again, and dealt with, by the reads that follow.
		if _, err := c.br.Peek(1); err != nil {
			break
		}
		for c.controlFrame() {
		}
	}
	c.readLoop(ws)
}

// controlFrame handles a ping or pong from the client that lies whole in
// the read buffer, between messages, as the library would, and reports
// whether there was one. Anything else (data, a close, a frame not
// well-formed or not yet whole) is left to the library.
func (c *Conn) controlFrame() bool {
	n := c.br.Buffered()
	if n < 6 {
		return false
	}
	b, _ := c.br.Peek(n)
	op := b[0] & 0x0f
	// FIN, no RSV bits, masked (as a client's frames must be), at most
	// 125 bytes of payload.
	if b[0]&0xf0 != 0x80 || (op != websocket.PingMessage && op != websocket.PongMessage) || b[1]&0x80 == 0 {
		return false
	}
	size := int(b[1] & 0x7f)
	if size > maxControlPayload || n < 6+size {
		return false
	}
	var payload [maxControlPayload]byte
	for i := range size {
		payload[i] = b[6+i] ^ b[2+i%4]
	}
	c.br.Discard(6 + size)
	if c.control() && op == websocket.PingMessage {
		c.queuePong(string(payload[:size]))
	}
	return true
}

// watchReadable prepares idle's wait: the read buffer is ours, so idle
// can wait in it.
func (c *Conn) watchReadable() {
	c.watch = true
	// Made once: a go statement with arguments would allocate a closure
	// each time the connection goes idle, a few times a minute.
	c.wait = func() { c.idle(c.ws.Load()) }
}

// readOne reads and handles one message (and the control frames before
// it); false when the connection is over.
func (c *Conn) readOne(ws *websocket.Conn) bool {
	cfg := &c.hub.cfg
	m := c.hub.metrics
	typ, data, tooBig, err := readMessage(ws, cfg.MaxMessageSize)
	now := time.Now().UnixNano()
	c.lastSeen.Store(now)
	if err != nil {
		c.readFailed(err)
		return false
	}
	if tooBig {
		c.closeWith(websocket.CloseMessageTooBig, "message too big", ByTooBig)
		return true
	}
	m.messagesIn.Inc()
	m.bytesIn.Add(float64(len(data)))
	if c.ending() {
		return true // waiting for the client's close frame; late data is dropped
	}
	if cfg.RatePerSecond > 0 && !c.allow(now) {
		c.closeWith(websocket.ClosePolicyViolation, "rate limit exceeded", ByRateLimit)
		return true
	}
	binary := typ == websocket.BinaryMessage
	if !binary && !utf8.Valid(data) {
		c.closeWith(websocket.CloseInvalidFramePayloadData, "invalid UTF-8", ByProtocol)
		return true
	}
	if c.ac != nil {
		c.acCommand(data, binary) // actioncable.go
		return true
	}
	if !c.events.has(eventMessage) {
		return true
	}
	c.paused.Store(true)
	c.stream.Push(callback.Event{Type: callback.EventMessage, Data: data, Binary: binary})
	c.paused.Store(false)
	c.lastSeen.Store(time.Now().UnixNano())
	return true
}

// allow is the token bucket of websocket.rate_limit, over every frame the
// client sends but its close: messages, pings and pongs. The read loop's
// own.
func (c *Conn) allow(now int64) bool {
	cfg := &c.hub.cfg
	c.tokens += float64(now-c.tokensAt) / float64(time.Second) * float64(cfg.RatePerSecond)
	c.tokensAt = now
	if max := float64(cfg.RateBurst); c.tokens > max {
		c.tokens = max
	}
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// readFailed records why reading stopped, unless the end was decided
// already (then this error is only its consequence).
func (c *Conn) readFailed(err error) {
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		c.decide(closing{code: ce.Code, reason: ce.Text, by: ByClient})
	case errors.Is(err, websocket.ErrReadLimit):
		// A length that overflows: the library sends no close frame.
		c.decide(closing{code: websocket.CloseMessageTooBig, reason: "message too big", by: ByTooBig})
	case isNetErr(err):
		c.decide(closing{code: closeNoFrame, by: ByClient})
	default:
		// Anything else the library reports is a protocol error, for which
		// it has sent a 1002 close frame.
		c.decide(closing{code: websocket.CloseProtocolError, reason: err.Error(), by: ByProtocol})
	}
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne)
}
