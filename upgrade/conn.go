package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/fasthttp/websocket"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
)

// Values of a close event's "by" (SPEC §3).
const (
	ByClient    = "client"
	ByApp       = "app"
	ByTimeout   = "timeout"
	BySlow      = "slow"
	ByRateLimit = "rate_limit"
	ByTooBig    = "too_big"
	ByProtocol  = "protocol"
	ByExpired   = "expired"
	ByUpstream  = "upstream"
	ByShutdown  = "shutdown"
	ByNodeLost  = "node_lost"
	ByError     = "error"
)

// closeNoFrame is reported when the peer went away without a close frame
// (RFC 6455 §7.1.5: "abnormal closure"); it is never sent on the wire.
const closeNoFrame = websocket.CloseAbnormalClosure

// outgoing is one queued write: a shared broadcast frame, a message of this
// connection alone, or a ping.
type outgoing struct {
	prepared *websocket.PreparedMessage
	data     []byte
	binary   bool
	ping     bool // a ping frame
	pong     bool // a pong frame carrying data
	size     int
}

// closing is what ends a connection, decided once by whoever got there
// first; it becomes the close frame Cablecar sends (when it ends the
// connection) and the close event the app receives.
type closing struct {
	code   int
	reason string
	by     string
	send   bool // Cablecar sends a close frame (false: the peer did, or is gone)
}

// Conn is one upgraded client connection.
//
// Goroutines: the read loop (the hijacked connection's goroutine) lives as
// long as the socket and owns its end; a writer exists only while there is
// something to write; the callback stream's sender only while there are
// events to post. An idle connection costs one parked goroutine.
//
// The order of an end, whoever starts it: the close is decided once
// (closeWith); the writer sends what was queued before it (unless the
// client is too slow for that) and then the close frame; the read loop
// waits for the client's close frame, or the hub's heartbeat cuts the
// socket after the close timeout; then teardown, once: socket closed,
// connection unregistered, channels left, close event queued.
type Conn struct {
	hub    *Hub
	id     string
	log    zerolog.Logger
	events eventSet
	claims json.RawMessage
	stream *callback.Stream

	// ws is nil until the 101 has been written. The heartbeat reads it
	// without the lock, hence atomic.
	ws atomic.Pointer[websocket.Conn]
	// raw is the TCP connection under ws. fasthttp's hijacked wrapper
	// ignores Close (the server closes it when the handler returns), so
	// cutting a socket from outside the read loop needs the real one.
	raw net.Conn

	// Where and with what this connection's events are posted.
	eventsPath   string
	eventHeaders [][2]string

	mu       sync.Mutex
	queue    []outgoing
	writing  bool
	end      *closing // set once
	endSent  bool     // the writer has taken end
	torn     bool     // teardown has begun: no more writers, joins or closes of the socket
	fenced   bool     // given up by a lapsed lease: its close event is another node's to send
	writers  sync.WaitGroup
	state    string
	channels []string

	lastSeen  atomic.Int64 // unix nanos of the last frame from the client
	closeBy   atomic.Int64 // unix nanos after which the socket is cut; 0 = not closing
	paused    atomic.Bool  // the read loop waits on the app: silence is ours, not the client's
	nextPing  int64        // heartbeat goroutine only; 0 = not yet scheduled
	createdAt int64
	expires   int64 // unix nanos when the handshake's token expires; 0 = never

	// The read loop's own.
	tokens   float64
	tokensAt int64
}

// enqueue hands a message to the writer. A full queue closes the connection
// as slow: its client is not keeping up, and holding more for it would take
// memory from everyone else.
func (c *Conn) enqueue(o outgoing) {
	c.mu.Lock()
	if c.end != nil {
		c.mu.Unlock()
		return
	}
	if len(c.queue) >= c.hub.cfg.SendQueue {
		c.mu.Unlock()
		c.hub.metrics.queueDrops.Inc()
		c.closeWith(websocket.ClosePolicyViolation, "send queue full: client too slow", BySlow)
		return
	}
	c.queue = append(c.queue, o)
	c.kickLocked()
	c.mu.Unlock()
}

// kickLocked starts the writer if there is work, a socket, and no writer.
func (c *Conn) kickLocked() {
	if c.writing || c.torn || c.ws.Load() == nil || (len(c.queue) == 0 && (c.end == nil || c.endSent || !c.end.send)) {
		return
	}
	c.writing = true
	c.writers.Add(1)
	go c.writeLoop()
}

// writeLoop is the connection's only writer of data frames. It takes the
// whole queue at once, writes it without holding the lock, and exits when
// the queue is empty.
func (c *Conn) writeLoop() {
	defer c.writers.Done()
	ws := c.ws.Load()
	var batch []outgoing
	for {
		c.mu.Lock()
		var end *closing
		if c.end != nil && c.end.send && !c.endSent && len(c.queue) == 0 {
			end = c.end
			c.endSent = true
		}
		if len(c.queue) == 0 && end == nil {
			c.writing = false
			c.mu.Unlock()
			return
		}
		batch, c.queue = c.queue, batch[:0]
		c.mu.Unlock()

		deadline := time.Now().Add(c.hub.cfg.WriteTimeout)
		if err := ws.NetConn().SetWriteDeadline(deadline); err != nil {
			c.writeFailed(err)
			return
		}
		for i := range batch {
			if err := c.write(ws, &batch[i], deadline); err != nil {
				c.writeFailed(err)
				return
			}
			batch[i] = outgoing{}
		}
		batch = batch[:0]
		if end != nil {
			msg := websocket.FormatCloseMessage(end.code, end.reason)
			if err := ws.WriteControl(websocket.CloseMessage, msg, deadline); err != nil && !errors.Is(err, websocket.ErrCloseSent) {
				c.writeFailed(err)
				return
			}
		}
	}
}

func (c *Conn) write(ws *websocket.Conn, o *outgoing, deadline time.Time) error {
	m := c.hub.metrics
	switch {
	case o.ping:
		m.pings.Inc()
		return ws.WriteControl(websocket.PingMessage, nil, deadline)
	case o.pong:
		return ws.WriteControl(websocket.PongMessage, o.data, deadline)
	case o.prepared != nil:
		if err := ws.WritePreparedMessage(o.prepared); err != nil {
			return err
		}
	default:
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
func (c *Conn) writeFailed(err error) {
	c.mu.Lock()
	c.writing = false
	c.queue = nil
	c.mu.Unlock()
	by := ByClient
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		by = BySlow
	}
	c.decide(closing{code: closeNoFrame, reason: "write failed", by: by})
	c.cut()
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
		c.queue = nil
		// Our close frame is stuck behind the write the client is not
		// reading; waiting long for its answer would only delay the close
		// event.
		wait = min(wait, slowCloseWait)
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

// heartbeat is the hub ticker's visit: ping when due, close a connection
// that has been silent too long, cut a close handshake that takes too long.
func (c *Conn) heartbeat(now int64) {
	cfg := &c.hub.cfg
	if c.ws.Load() == nil {
		// Accepted but the 101 was never written (the client left): nothing
		// will ever run this connection's read loop.
		if now-c.createdAt > int64(cfg.HandshakeTimeout) {
			c.abandon()
		}
		return
	}
	if by := c.closeBy.Load(); by != 0 {
		if now > by {
			c.cut()
		}
		return
	}
	if c.expires != 0 && now > c.expires {
		c.closeWith(websocket.ClosePolicyViolation, "token expired", ByExpired)
		return
	}
	if c.paused.Load() {
		return
	}
	if now-c.lastSeen.Load() > int64(cfg.PongTimeout) {
		c.closeWith(websocket.CloseGoingAway, "no pong", ByTimeout)
		// A silent client will not answer the close frame either.
		c.closeBy.Store(now)
		return
	}
	if c.nextPing == 0 {
		// Spread the pings of connections made in the same instant over
		// the interval rather than sending them all on one tick.
		c.nextPing = now + rand.Int64N(int64(cfg.PingInterval))
	}
	if now >= c.nextPing {
		c.nextPing = now + int64(cfg.PingInterval)
		c.enqueuePing()
	}
}

func (c *Conn) enqueuePing() {
	c.mu.Lock()
	if c.end == nil && len(c.queue) < c.hub.cfg.SendQueue {
		c.queue = append(c.queue, outgoing{ping: true})
		c.kickLocked()
	}
	c.mu.Unlock()
}

// run is the read loop: the life of the connection after the 101.
func (c *Conn) run(ws *websocket.Conn) {
	now := time.Now().UnixNano()
	c.lastSeen.Store(now)
	cfg := &c.hub.cfg
	c.tokens, c.tokensAt = float64(cfg.RateBurst), now

	ws.SetReadLimit(cfg.MaxMessageSize)
	// Control frames are handled inside ReadMessage and never returned
	// from it, so they count as signs of life here.
	ws.SetPongHandler(func(string) error {
		c.lastSeen.Store(time.Now().UnixNano())
		return nil
	})
	ws.SetPingHandler(func(data string) error {
		c.lastSeen.Store(time.Now().UnixNano())
		// The pong goes through the writer's queue: one goroutine writes.
		c.mu.Lock()
		if c.end == nil && len(c.queue) < cfg.SendQueue {
			c.queue = append(c.queue, outgoing{pong: true, data: []byte(data)})
			c.kickLocked()
		}
		c.mu.Unlock()
		return nil
	})
	ws.SetCloseHandler(func(code int, text string) error {
		c.decide(closing{code: code, reason: text, by: ByClient})
		// Answer the client's close frame if we have not sent ours.
		c.mu.Lock()
		sent := c.endSent
		c.mu.Unlock()
		if !sent {
			msg := websocket.FormatCloseMessage(code, "")
			if code == websocket.CloseNoStatusReceived {
				msg = websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
			}
			_ = ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(cfg.WriteTimeout))
		}
		return nil
	})

	// The stream exists before the writer can run: Apply is only ever
	// called through it, and teardown needs it.
	c.stream = c.hub.cb.NewStream(c, c.id, c.eventsPath, c.eventHeaders)
	if t := cfg.Tracker; t != nil && c.events.has(eventClose) {
		c.mu.Lock()
		t.Track(registry.ConnRecord{ID: c.id, Path: c.eventsPath, Headers: c.eventHeaders,
			State: c.state, Channels: slices.Clone(c.channels), Claims: c.claims})
		c.mu.Unlock()
		// The record is in Redis before the app hears of the connection,
		// so that a close the app will wait for cannot be lost with this
		// node. It shares the tracker's next batched write; it waits no
		// longer than the time after which a broken Redis is reported.
		ctx, cancel := context.WithTimeout(context.Background(), cfg.BrokerTimeout)
		if err := t.Written(ctx); err != nil {
			// Debug: while Redis is away the broker has said so once already.
			c.log.Debug().Err(err).Msg("connection record not yet in Redis; its close event is lost should this node die")
		}
		cancel()
	}
	c.mu.Lock()
	c.raw = ws.NetConn()
	if u, ok := c.raw.(interface{ UnsafeConn() net.Conn }); ok {
		c.raw = u.UnsafeConn()
	}
	c.ws.Store(ws)
	c.kickLocked()
	c.mu.Unlock()

	if c.events.has(eventOpen) {
		c.stream.Push(callback.Event{Type: callback.EventOpen})
	}
	c.readLoop(ws)
	c.teardown()
}

func (c *Conn) readLoop(ws *websocket.Conn) {
	cfg := &c.hub.cfg
	m := c.hub.metrics
	for {
		typ, data, err := ws.ReadMessage()
		now := time.Now().UnixNano()
		c.lastSeen.Store(now)
		if err != nil {
			c.readFailed(err)
			return
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
		if !c.events.has(eventMessage) {
			continue
		}
		c.paused.Store(true)
		c.stream.Push(callback.Event{Type: callback.EventMessage, Data: data, Binary: binary})
		c.paused.Store(false)
		c.lastSeen.Store(time.Now().UnixNano())
	}
}

func (c *Conn) ending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.end != nil
}

// allow is the token bucket of websocket.rate_limit.
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
		// The library has sent the 1009 close frame itself.
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

// teardown runs once, when the read loop has ended.
//
// When it returns, the server takes the socket back, so no writer may be
// left: it is closed first, which ends any write in progress, and waited for.
func (c *Conn) teardown() {
	c.mu.Lock()
	c.raw.Close()
	end := *c.end
	channels := c.channels
	c.channels = nil
	c.torn = true
	c.queue = nil
	c.mu.Unlock()
	c.writers.Wait()

	c.hub.remove(c)
	for _, ch := range channels {
		c.hub.leave(c, ch)
	}
	c.hub.metrics.closes.WithLabelValues(end.by).Inc()
	code := end.code
	if code == 0 {
		code = closeNoFrame
	}
	c.log.Info().Int("code", code).Str("by", end.by).Msg("websocket closed")
	c.mu.Lock()
	fenced := c.fenced
	c.mu.Unlock()
	if fenced {
		// Another node sent (or will send) this connection's close event,
		// with by: node_lost; a second one would count it closed twice.
		c.stream.End(nil)
	} else if c.events.has(eventClose) {
		// The record goes once the close event is delivered (or finally
		// dropped): should this node die, or shut down, before that,
		// another one posts it. Nothing here waits for it, so a close
		// event the app makes wait keeps no part of the connection.
		var untrack func()
		if t := c.hub.cfg.Tracker; t != nil {
			id := c.id
			untrack = func() { t.Untrack(id) }
		}
		c.stream.PushClose(callback.Event{Code: code, Reason: end.reason, By: end.by}, untrack)
	} else {
		c.stream.End(nil)
	}
}

// trackedLocked tells the tracker of a change of state or channels; the caller
// holds c.mu.
func (c *Conn) trackedLocked() {
	if t := c.hub.cfg.Tracker; t != nil && c.events.has(eventClose) && c.ws.Load() != nil && !c.torn {
		t.Update(c.id, c.state, slices.Clone(c.channels))
	}
}

// abandon forgets a connection whose 101 was never written.
func (c *Conn) abandon() {
	if !c.decide(closing{code: closeNoFrame, reason: "handshake not completed", by: ByClient}) {
		return
	}
	c.mu.Lock()
	channels := c.channels
	c.channels = nil
	c.torn = true
	c.mu.Unlock()
	c.hub.remove(c)
	for _, ch := range channels {
		c.hub.leave(c, ch)
	}
	c.log.Debug().Msg("accepted connection abandoned before its 101 was written")
}

// Info is the connection as the events of a webhook describe it.
func (c *Conn) Info() callback.ConnInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return callback.ConnInfo{ID: c.id, State: c.state, Channels: slices.Clone(c.channels), Claims: c.claims}
}

// Apply carries out the app's reply to a batch of events, in the reply's
// field order: state, unsubscribe, subscribe, send, publish, close.
func (c *Conn) Apply(r *callback.Reply) {
	if r.State != nil {
		c.mu.Lock()
		c.state = *r.State
		c.trackedLocked()
		c.mu.Unlock()
	}
	for _, ch := range r.Unsubscribe {
		c.unsubscribe(ch)
	}
	for _, ch := range r.Subscribe {
		if err := c.subscribe(ch); err != nil {
			c.log.Warn().Err(err).Str("channel", ch).Msg("subscribe from the app's reply failed")
		}
	}
	for _, f := range r.Send {
		c.enqueue(outgoing{data: f.Data, binary: f.Binary, size: len(f.Data)})
	}
	if len(r.Publish) > 0 {
		msgs := make([]pubsub.Message, len(r.Publish))
		for i, p := range r.Publish {
			msgs[i] = pubsub.Message{Channel: p.Channel, Data: p.Data, Binary: p.Binary}
			if p.ExceptSelf {
				msgs[i].Except = c.id
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.hub.cfg.BrokerTimeout)
		if err := c.hub.broker.Publish(ctx, msgs...); err != nil {
			c.log.Warn().Err(err).Msg("publish from the app's reply failed")
		}
		cancel()
	}
	if r.Close != nil {
		c.closeWith(r.Close.Code, r.Close.Reason, ByApp)
	}
}

// Fail ends the connection after the app refused it for good (410) or its
// webhooks kept failing.
func (c *Conn) Fail(gone bool) {
	if gone {
		c.closeWith(websocket.CloseNormalClosure, "", ByApp)
		return
	}
	c.closeWith(websocket.CloseInternalServerErr, "app unavailable", ByUpstream)
}

var _ callback.Target = (*Conn)(nil)

func (c *Conn) subscribe(ch string) error {
	c.mu.Lock()
	if c.torn || slices.Contains(c.channels, ch) {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.hub.cfg.BrokerTimeout)
	defer cancel()
	if err := c.hub.join(ctx, c, ch); err != nil {
		return err
	}
	c.mu.Lock()
	if !c.torn {
		c.channels = append(c.channels, ch)
		c.trackedLocked()
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	// Torn down while joining: teardown has left its channels already.
	c.hub.leave(c, ch)
	return nil
}

func (c *Conn) unsubscribe(ch string) {
	c.mu.Lock()
	i := slices.Index(c.channels, ch)
	if i < 0 {
		c.mu.Unlock()
		return
	}
	c.channels = slices.Delete(c.channels, i, i+1)
	c.trackedLocked()
	c.mu.Unlock()
	c.hub.leave(c, ch)
}
