package upgrade

import (
	"time"

	"github.com/fasthttp/websocket"
)

// How a connection ends: decided once, by whoever gets there first; the
// close frame follows what was queued before it; the socket is cut when the
// client does not answer in time.

// closing is what ends a connection, decided once by whoever got there
// first; it becomes the close frame Cablecar sends (when it ends the
// connection) and the close event the app receives.
type closing struct {
	code   int
	reason string
	by     string
	send   bool // Cablecar sends a close frame (false: the peer did, or is gone)
}

// closeWith ends the connection from Cablecar's side: the close frame is
// sent after what is already queued (so that an app's reply of messages
// followed by a close arrives whole), except for a slow client, whose queue
// is dropped. The socket is cut if the client has not answered within the
// close timeout.
func (c *Conn) closeWith(code int, reason, by string) {
	c.closeWithin(code, reason, by, c.hub.cfg.CloseTimeout)
}

// closeWithin is closeWith with the time the client has to answer.
func (c *Conn) closeWithin(code int, reason, by string, wait time.Duration) {
	if !c.decide(closing{code: code, reason: reason, by: by, send: true}) {
		return
	}
	c.mu.Lock()
	if by == BySlow {
		c.dropQueueLocked()
		// Our close frame is stuck behind the write the client is not
		// reading; waiting long for its answer would only delay the close
		// event.
		wait = min(wait, slowCloseWait)
	}
	if c.ac != nil {
		c.acDisconnectLocked(by)
	}
	c.kickLocked()
	c.mu.Unlock()
	c.closeBy.Store(time.Now().Add(wait).UnixNano())
}

// slowCloseWait is how long a client closed as slow has to take our close
// frame before its socket is cut.
const slowCloseWait = time.Second

// decide records how the connection ends; the first caller wins.
func (c *Conn) decide(e closing) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.end != nil {
		return false
	}
	c.end = &e
	return true
}

// ending reports whether the end has been decided.
func (c *Conn) ending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.end != nil
}

// cut closes the socket at once; the read loop then tears down. The lock
// keeps it from touching a socket that teardown has handed back to the
// server (closing does not block, unlike a write).
func (c *Conn) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw != nil && !c.torn {
		c.raw.Close()
	}
}

// closeHandler answers the client's close frame, unless ours went first.
func (c *Conn) closeHandler(_ *websocket.Conn) func(code int, text string) error {
	return func(code int, text string) error {
		c.decide(closing{code: code, reason: text, by: ByClient})
		msg := websocket.FormatCloseMessage(code, "")
		if code == websocket.CloseNoStatusReceived {
			msg = websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		}
		c.replyClose(msg) // unless ours went first
		return nil
	}
}
