package upgrade

import (
	"errors"
	"net"
	"time"

	"github.com/fasthttp/websocket"
)

// The write path: one writer per connection, running only while there is
// something to write, fed by a send queue bounded in messages and in bytes
// (SPEC §5), and by two flags for the control frames it owes, which take no
// room however often they are asked for.

// outgoing is one queued message: a shared broadcast frame or a message of
// this connection alone.
type outgoing struct {
	prepared *websocket.PreparedMessage
	data     []byte
	binary   bool
	size     int // payload bytes, counted in the queue's bytes until written
}

// maxControlPayload is the most a control frame carries (RFC 6455 §5.5).
const maxControlPayload = 125

// enqueue hands a message to the writer. A full queue — websocket.send_queue
// messages, or websocket.send_queue_bytes not yet written — closes the
// connection as slow: its client is not keeping up, and holding more for it
// would take memory from everyone else. A single message larger than the
// byte bound is still taken into an empty queue, so that what a client is
// sent is not limited by the queue's size, only what piles up for it; a
// connection so holds at most send_queue_bytes plus one message.
func (c *Conn) enqueue(o outgoing) {
	c.mu.Lock()
	if c.end != nil {
		c.mu.Unlock()
		return
	}
	cfg := &c.hub.cfg
	// Only the writer lowers queued meanwhile: the check can only err on
	// the side of room.
	queued := c.queued.Load()
	if len(c.queue) >= cfg.SendQueue || (queued > 0 && queued+int64(o.size) > cfg.SendQueueBytes) {
		c.mu.Unlock()
		c.hub.metrics.queueDrops.Inc()
		c.closeWith(websocket.ClosePolicyViolation, "send queue full: client too slow", BySlow)
		return
	}
	c.queue = append(c.queue, o)
	c.queued.Add(int64(o.size))
	c.kickLocked()
	c.mu.Unlock()
}

// queuePing asks the writer for a heartbeat ping.
func (c *Conn) queuePing() {
	c.mu.Lock()
	if c.end == nil {
		c.pingDue = true
		c.kickLocked()
	}
	c.mu.Unlock()
}

// queuePong answers a client's ping. Pongs not yet written are coalesced
// into one carrying the latest ping's data, as RFC 6455 §5.5.3 allows: a
// client pinging faster than it reads gets one pong per write, not one per
// ping, and holds no more than one control payload here.
func (c *Conn) queuePong(data string) {
	c.mu.Lock()
	if c.end == nil {
		c.pong = append(c.pong[:0], data[:min(len(data), maxControlPayload)]...)
		c.pongDue = true
		c.kickLocked()
	}
	c.mu.Unlock()
}

// kickLocked starts the writer if there is work, a socket, and no writer.
func (c *Conn) kickLocked() {
	if c.writing || c.torn || c.ws.Load() == nil {
		return
	}
	if len(c.queue) == 0 && !c.pingDue && !c.pongDue && (c.end == nil || c.endSent || !c.end.send) {
		return
	}
	c.writing = true
	c.writers.Add(1)
	go c.writeLoop()
}

// dropQueueLocked forgets what waits in the queue, and its bytes.
func (c *Conn) dropQueueLocked() {
	n := 0
	for i := range c.queue {
		n += c.queue[i].size
	}
	c.queued.Add(-int64(n))
	c.queue = nil
	c.pingDue, c.pongDue = false, false
}

// writeLoop is the connection's only writer. Each round it takes the whole
// queue and the control frames due, writes them without holding the lock,
// and it exits when nothing is left.
func (c *Conn) writeLoop() {
	defer c.writers.Done()
	ws := c.ws.Load()
	var (
		batch []outgoing
		pong  [maxControlPayload]byte
	)
	for {
		c.mu.Lock()
		var end *closing
		if c.end != nil && c.end.send && !c.endSent && len(c.queue) == 0 {
			end = c.end
			c.endSent = true
		}
		ping, pongDue := c.pingDue, c.pongDue
		pongLen := copy(pong[:], c.pong)
		c.pingDue, c.pongDue = false, false
		if len(c.queue) == 0 && end == nil && !ping && !pongDue {
			c.writing = false
			c.mu.Unlock()
			return
		}
		batch, c.queue = c.queue, batch[:0]
		c.mu.Unlock()

		deadline := time.Now().Add(c.hub.cfg.WriteTimeout)
		if err := ws.NetConn().SetWriteDeadline(deadline); err != nil {
			c.writeFailed(err, batch)
			return
		}
		// Control frames first: they are small, and a pong answers a ping
		// best when it does not wait behind data.
		if pongDue {
			if err := ws.WriteControl(websocket.PongMessage, pong[:pongLen], deadline); err != nil {
				c.writeFailed(err, batch)
				return
			}
		}
		if ping {
			c.hub.metrics.pings.Inc()
			if err := ws.WriteControl(websocket.PingMessage, nil, deadline); err != nil {
				c.writeFailed(err, batch)
				return
			}
		}
		for i := range batch {
			if err := c.write(ws, &batch[i]); err != nil {
				c.writeFailed(err, batch[i:])
				return
			}
			c.queued.Add(-int64(batch[i].size))
			batch[i] = outgoing{}
		}
		batch = batch[:0]
		if end != nil {
			msg := websocket.FormatCloseMessage(end.code, end.reason)
			if err := ws.WriteControl(websocket.CloseMessage, msg, deadline); err != nil && !errors.Is(err, websocket.ErrCloseSent) {
				c.writeFailed(err, nil)
				return
			}
		}
	}
}

func (c *Conn) write(ws *websocket.Conn, o *outgoing) error {
	m := c.hub.metrics
	if o.prepared != nil {
		if err := ws.WritePreparedMessage(o.prepared); err != nil {
			return err
		}
	} else {
		typ := websocket.TextMessage
		if o.binary {
			typ = websocket.BinaryMessage
		}
		if err := ws.WriteMessage(typ, o.data); err != nil {
			return err
		}
	}
	m.messagesOut.Inc()
	m.bytesOut.Add(float64(o.size))
	return nil
}

// writeFailed ends a connection whose socket cannot be written to: a write
// deadline passed (the client stopped reading) or the socket is gone.
// unwritten is what the writer held and will not write.
func (c *Conn) writeFailed(err error, unwritten []outgoing) {
	n := 0
	for i := range unwritten {
		n += unwritten[i].size
	}
	c.queued.Add(-int64(n))
	clear(unwritten)
	c.mu.Lock()
	c.writing = false
	c.dropQueueLocked()
	c.mu.Unlock()
	by := ByClient
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		by = BySlow
	}
	c.decide(closing{code: closeNoFrame, reason: "write failed", by: by})
	c.cut()
}
