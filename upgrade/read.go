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

func (c *Conn) readLoop(ws *websocket.Conn) {
	cfg := &c.hub.cfg
	m := c.hub.metrics
	for {
		typ, data, tooBig, err := readMessage(ws, cfg.MaxMessageSize)
		now := time.Now().UnixNano()
		c.lastSeen.Store(now)
		if err != nil {
			c.readFailed(err)
			return
		}
		if tooBig {
			c.closeWith(websocket.CloseMessageTooBig, "message too big", ByTooBig)
			continue
		}
		m.messagesIn.Inc()
		m.bytesIn.Add(float64(len(data)))
		if c.ending() {
			continue // waiting for the client's close frame; late data is dropped
		}
		if cfg.RatePerSecond > 0 && !c.allow(now) {
			c.closeWith(websocket.ClosePolicyViolation, "rate limit exceeded", ByRateLimit)
			continue
		}
		binary := typ == websocket.BinaryMessage
		if !binary && !utf8.Valid(data) {
			c.closeWith(websocket.CloseInvalidFramePayloadData, "invalid UTF-8", ByProtocol)
			continue
		}
		if c.ac != nil {
			c.acCommand(data, binary) // actioncable.go
			continue
		}
		if !c.events.has(eventMessage) {
			continue
		}
		c.paused.Store(true)
		c.stream.Push(callback.Event{Type: callback.EventMessage, Data: data, Binary: binary})
		c.paused.Store(false)
		c.lastSeen.Store(time.Now().UnixNano())
	}
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
