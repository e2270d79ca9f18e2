package upgrade

import (
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
)

// The write path: one writer per connection, running only while there is
// something to write, fed by a send queue bounded in messages and in bytes
// (SPEC §5), and by two flags for the control frames it owes, which take no
// room however often they are asked for.

// outgoing is one queued message: a broadcast's frame, built once and
// shared by every member (frame.go), or a message of this connection alone.
type outgoing struct {
	frame  []byte // the whole frame, header included; or, after a write that took part of it, what is left
	data   []byte
	binary bool
	size   int // payload bytes, counted in the queue's bytes until written
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
	full := c.enqueueLocked(o)
	c.mu.Unlock()
	if full {
		c.closeSlow()
	}
}

// deliver is enqueue for a broadcast's frame, written at once by the
// caller when nothing waits ahead of it and the socket takes it whole
// without waiting: then no writer is started and nothing queued, which is
// most of what a delivery would otherwise cost. It reports whether the
// frame was written (the caller counts it in the metrics). Whatever the
// socket does not take goes to the writer, ahead of anything queued later.
func (c *Conn) deliver(o outgoing) bool {
	c.mu.Lock()
	if o.frame != nil && c.end == nil && !c.writing && len(c.queue) == 0 && !c.torn && c.ws.Load() != nil {
		if c.rawc == nil {
			if sc, ok := c.raw.(syscall.Conn); ok {
				c.rawc, _ = sc.SyscallConn()
			}
		}
		if c.rawc != nil {
			n := writeNow(c.rawc, o.frame)
			if n == len(o.frame) {
				c.mu.Unlock()
				return true
			}
			o.frame = o.frame[n:]
		}
	}
	full := c.enqueueLocked(o)
	c.mu.Unlock()
	if full {
		c.closeSlow()
	}
	return false
}

// enqueueLocked queues o, and reports a full queue: the caller then closes
// the connection as slow, without the lock.
func (c *Conn) enqueueLocked(o outgoing) (full bool) {
	if c.end != nil {
		return false
	}
	cfg := &c.hub.cfg
	// Only the writer lowers queued meanwhile: the check can only err on
	// the side of room.
	queued := c.queued.Load()
	if len(c.queue) >= cfg.SendQueue || (queued > 0 && queued+int64(o.size) > cfg.SendQueueBytes) {
		c.hub.metrics.queueDrops.Inc()
		return true
	}
	c.queue = append(c.queue, o)
	c.queued.Add(int64(o.size))
	c.kickLocked()
	return false
}

func (c *Conn) closeSlow() {
	c.closeWith(websocket.ClosePolicyViolation, "send queue full: client too slow", BySlow)
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
	if c.writeFn == nil {
		// Bound once: go c.writeLoop() would allocate the method value
		// each time, once per heartbeat on an idle connection, and that
		// garbage is what made an idle node's RSS climb.
		c.writeFn = c.writeLoop
	}
	go c.writeFn()
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
// queue and the control frames due, and writes them without holding the
// lock, gathered into as few writes as a pooled buffer allows (one, for
// small messages), under one write deadline. It exits when nothing is left,
// or once a close frame has gone or the peer is gone (stopLocked).
func (c *Conn) writeLoop() {
	defer c.writers.Done()
	var (
		batch []outgoing
		pong  [maxControlPayload]byte
	)
	for {
		c.mu.Lock()
		if c.stopLocked() {
			c.writing = false
			c.dropQueueLocked()
			c.mu.Unlock()
			return
		}
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

		var r round
		if pongDue {
			r.control(websocket.PongMessage, pong[:pongLen])
		}
		if ping {
			c.hub.metrics.pings.Inc()
			r.control(websocket.PingMessage, nil)
		}
		ok := c.writeRound(&r, batch, end)
		r.release()
		clear(batch)
		batch = batch[:0]
		if !ok {
			return
		}
	}
}

// stopLocked says the writer writes nothing more: a close frame has gone
// (ours, or the answer to the client's), or the peer closed or is gone.
func (c *Conn) stopLocked() bool {
	return c.end != nil && (!c.end.send || c.endSent)
}

// round is what one round of the writer has gathered and not yet written.
type round struct {
	bp  *[]byte
	buf []byte
}

func (r *round) room() int {
	if r.bp == nil {
		return writeBufSize
	}
	return cap(r.buf) - len(r.buf)
}

func (r *round) grab() {
	if r.bp == nil {
		r.bp = writeBufs.Get().(*[]byte)
		r.buf = (*r.bp)[:0]
	}
}

func (r *round) control(opcode int, payload []byte) {
	r.grab()
	r.buf = append(appendFrameHeader(r.buf, opcode, len(payload)), payload...)
}

func (r *round) release() {
	if r.bp != nil {
		*r.bp = r.buf[:0]
		writeBufs.Put(r.bp)
		r.bp, r.buf = nil, nil
	}
}

// writeRound writes a round's control frames, batch and close frame, and
// says whether the writer goes on. Messages count as written, in the queue's
// bytes and the metrics, once the write that carries them has returned.
func (c *Conn) writeRound(r *round, batch []outgoing, end *closing) bool {
	from := 0 // batch[from:i] are in r.buf, not yet written
	flush := func(i int) error {
		if len(r.buf) == 0 {
			return nil
		}
		_, err := c.writeRaw(r.buf)
		r.buf = r.buf[:0]
		if err == nil {
			c.wrote(batch[from:i])
			from = i
		}
		return err
	}
	var hdr [maxFrameHeader]byte
	for i := range batch {
		o := &batch[i]
		h := hdr[:0]
		if o.frame == nil {
			typ := websocket.TextMessage
			if o.binary {
				typ = websocket.BinaryMessage
			}
			h = appendFrameHeader(h, typ, len(o.data))
		}
		n := len(h) + len(o.frame) + len(o.data)
		if n > r.room() {
			if err := flush(i); err != nil {
				c.writeFailed(err, batch[from:])
				return false
			}
			if c.stopping() {
				c.unwritten(batch[from:])
				return true // the next round finds it stopped
			}
		}
		if n <= r.room() {
			r.grab()
			r.buf = append(append(append(r.buf, h...), o.frame...), o.data...)
			continue
		}
		// Larger than a buffer: written as it is, in one write.
		var err error
		if o.frame != nil {
			_, err = c.writeRaw(o.frame)
		} else if err = c.raw.SetWriteDeadline(time.Now().Add(c.hub.cfg.WriteTimeout)); err == nil {
			bufs := net.Buffers{append([]byte(nil), h...), o.data}
			_, err = bufs.WriteTo(c.raw)
		}
		if err != nil {
			c.writeFailed(err, batch[i:])
			return false
		}
		c.wrote(batch[i : i+1])
		from = i + 1
	}
	if end != nil {
		msg := websocket.FormatCloseMessage(end.code, end.reason)
		if len(msg) > maxControlPayload {
			c.writeFailed(errCloseReasonTooLong, batch[from:])
			return false
		}
		r.control(websocket.CloseMessage, msg)
	}
	if err := flush(len(batch)); err != nil {
		c.writeFailed(err, batch[from:])
		return false
	}
	return true
}

// writeRaw is one write to the socket, which must be done within
// websocket's write timeout: a client that takes less than that in a
// write's time has stopped reading.
func (c *Conn) writeRaw(p []byte) (int, error) {
	if err := c.raw.SetWriteDeadline(time.Now().Add(c.hub.cfg.WriteTimeout)); err != nil {
		return 0, err
	}
	return c.raw.Write(p)
}

var errCloseReasonTooLong = errors.New("close frame over 125 bytes")

// stopping is stopLocked, taking the lock.
func (c *Conn) stopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked()
}

// wrote counts written messages out of the queue's bytes and into the
// metrics, once per write rather than once per message.
func (c *Conn) wrote(msgs []outgoing) {
	if len(msgs) == 0 {
		return
	}
	n := 0
	for i := range msgs {
		n += msgs[i].size
	}
	c.queued.Add(-int64(n))
	m := c.hub.metrics
	m.messagesOut.Add(float64(len(msgs)))
	m.bytesOut.Add(float64(n))
}

// unwritten takes messages the writer will not write out of the queue's
// bytes.
func (c *Conn) unwritten(msgs []outgoing) {
	n := 0
	for i := range msgs {
		n += msgs[i].size
	}
	c.queued.Add(-int64(n))
}

// replyClose answers the client's close frame when Cablecar has not sent
// one: after the frame the writer may be in the middle of (the writer stops
// at the next frame boundary and is waited for), so that the answer cannot
// land inside another frame, and nothing is written after it.
func (c *Conn) replyClose(msg []byte) {
	c.mu.Lock()
	if c.endSent || c.raw == nil || c.torn {
		c.mu.Unlock()
		return
	}
	c.endSent = true
	c.mu.Unlock()
	// No writer starts once the end is decided and sent (kickLocked).
	c.writers.Wait()
	if len(msg) > maxControlPayload {
		return
	}
	frame := append(appendFrameHeader(make([]byte, 0, maxFrameHeader+len(msg)), websocket.CloseMessage, len(msg)), msg...)
	_, _ = c.writeRaw(frame)
}

// writeFailed ends a connection whose socket cannot be written to: a write
// deadline passed (the client stopped reading) or the socket is gone.
// unwritten is what the writer held and will not write.
func (c *Conn) writeFailed(err error, unwritten []outgoing) {
	c.unwritten(unwritten)
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
