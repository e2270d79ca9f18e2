package upgrade

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/callback"
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
	log    connLog
	events eventSet
	claims json.RawMessage
	stream *callback.Stream
	ac     *acConn   // ActionCable (actioncable.go); nil on a plain WebSocket
	hist   *connHist // envelope, resume (history.go); nil without either

	// ws is nil until the 101 has been written. The heartbeat reads it
	// without the lock, hence atomic.
	ws atomic.Pointer[websocket.Conn]
	// raw is the TCP connection under ws: cutting a socket from outside
	// the read loop closes it.
	raw net.Conn
	// rawc writes to raw without waiting (write.go's deliver); nil until
	// first needed, and when raw has no file descriptor (TLS).
	rawc syscall.RawConn

	// Where and with what this connection's events are posted.
	eventsPath   string
	eventHeaders [][2]string

	mu       sync.Mutex
	queue    []outgoing
	pingDue  bool   // a heartbeat ping waits for the writer
	pongDue  bool   // a pong carrying pong waits for the writer
	pong     []byte // the latest ping's data
	writing  bool
	end      *closing // set once
	endSent  bool     // the writer has taken end, or the client's close is answered: nothing more is written
	torn     bool     // teardown has begun: no more writers, joins or closes of the socket
	fenced   bool     // given up by a lapsed lease: its close event is another node's to send
	writers  sync.WaitGroup
	state    string
	channels []string // in join order; written only by the hub's join and leave (membership.go)

	// queued is the payload bytes enqueued and not yet written, those the
	// writer holds included: raised under mu, lowered by the writer.
	queued    atomic.Int64
	lastSeen  atomic.Int64 // unix nanos of the last frame from the client
	closeBy   atomic.Int64 // unix nanos after which the socket is cut; 0 = not closing
	paused    atomic.Bool  // the read loop waits on the app: silence is ours, not the client's
	opened    atomic.Bool  // the open event is queued (or not wanted): later events may follow it
	nextPing  int64        // heartbeat goroutine only; 0 = not yet scheduled
	createdAt int64
	expires   int64 // unix nanos when the handshake's token expires; 0 = never

	// The read loop's own.
	tokens   float64
	tokensAt int64
	br       *bufio.Reader // what the library reads the socket through; nil = not ours to watch
	watch    bool          // br is ours: the read loop hands idle waits to wait
	wait     func()        // idle on this connection's socket

	writeFn func() // writeLoop, bound once; guarded by mu
}

// awaitRecord lets the tracker's record of the connection reach Redis
// before the app hears of it, so that a close the app will wait for cannot
// be lost with this node. It shares the tracker's next batched write, a few
// milliseconds while Redis is well. While the broker is away the record
// cannot be written however long one waits: the connection then waits no
// longer than a first look (an accept must not hang on a broker outage; the
// record is written when Redis is back). The broker's health is looked at
// only after that first look, because it is the health of its subscriber
// connection, which may still be reconnecting when Redis is already back.
func (c *Conn) awaitRecord() {
	cfg := &c.hub.cfg
	w := cfg.Tracker
	if w == nil || !c.events.has(eventClose) {
		return
	}
	deadline := time.Now().Add(cfg.BrokerTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), min(recordLook, time.Until(deadline)))
		err := w.Written(ctx)
		cancel()
		if err == nil {
			return
		}
		if !errors.Is(err, context.DeadlineExceeded) || !time.Now().Before(deadline) || !c.hub.brokerReady() {
			// Debug: while Redis is away the broker has said so once already.
			c.log.Debug().Err(err).Msg("connection record not yet in Redis; its close event is lost should this node die")
			return
		}
	}
}

// recordLook is how long a wait for the connection's record goes before
// it looks whether the broker is still there: many times what the record
// takes while Redis is well.
const recordLook = 100 * time.Millisecond

// run is the read loop: the life of the connection after the 101.
func (c *Conn) run(ws *websocket.Conn) {
	now := time.Now().UnixNano()
	c.lastSeen.Store(now)
	cfg := &c.hub.cfg
	c.tokens, c.tokensAt = float64(cfg.RateBurst), now

	c.setHandlers(ws)

	// The stream exists before the writer can run: Apply is only ever
	// called through it, and teardown needs it.
	c.stream = c.hub.cb.NewStream(c, c.id, c.eventsPath, c.eventHeaders)
	c.acSessionStream() // session restore: numbering (session.go)
	if t := cfg.Tracker; t != nil {
		// Every connection is recorded, so any node can say where it is
		// (GET /connections/<id>); only those whose close event the app
		// wants are waited for below and posted by a survivor.
		c.mu.Lock()
		t.Track(registry.ConnRecord{ID: c.id, Path: c.eventsPath, Headers: c.eventHeaders,
			State: c.state, Channels: slices.Clone(c.channels), Claims: c.claims,
			NoClose: !c.events.has(eventClose), ActionCable: c.ac != nil, Identifiers: c.acIdentifiers()})
		c.mu.Unlock()
	}
	// Before the socket is handed to the writer: what the client is sent
	// comes after its record is in Redis, as the open event does, so a
	// client that got its first message has a close event coming whatever
	// happens to this node.
	c.awaitRecord()
	// The wait was ours: the client's silence counts from here.
	c.lastSeen.Store(time.Now().UnixNano())
	c.mu.Lock()
	c.raw = ws.NetConn()
	if w, ok := c.raw.(*wsConn); ok {
		c.raw, c.br = w.Conn, w.br
		if w.watch {
			c.watchReadable()
		}
	}
	c.ws.Store(ws)
	c.kickLocked()
	c.mu.Unlock()

	if c.events.has(eventOpen) && !c.acRestored() {
		c.stream.Push(callback.Event{Type: callback.EventOpen, Recovered: c.openRecovered()})
	}
	c.opened.Store(true)
	if c.watch {
		go c.wait()
		return
	}
	c.readLoop(ws)
}

// teardown runs once, when the read loop has ended.
//
// When it returns, the server takes the socket back, so no writer may be
// left: it is closed first, which ends any write in progress, and waited for.
func (c *Conn) teardown() {
	c.mu.Lock()
	c.raw.Close()
	end := *c.end
	c.torn = true
	c.dropQueueLocked()
	c.mu.Unlock()
	c.writers.Wait()

	c.acKeepPresence() // before remove drops it (session.go)
	c.hub.remove(c)
	c.leaveAll()
	c.hub.metrics.closes.WithLabelValues(end.by).Inc()
	code := end.code
	if code == 0 {
		code = closeNoFrame
	}
	c.log.Info().Int("code", code).Str("by", end.by).Msg("websocket closed")
	c.mu.Lock()
	fenced := c.fenced
	c.mu.Unlock()
	if c.acHold(end, code, fenced) {
		// Its close waits for the session to lapse (session.go).
		return
	}
	if fenced {
		// Another node sent (or will send) this connection's close event,
		// with by: node_lost; a second one would count it closed twice.
		c.stream.End(nil)
	} else if c.events.has(eventClose) {
		// The record goes once the close event is delivered (or finally
		// dropped): should this node die, or shut down, before that,
		// another one posts it — the same event, same id, as numbered
		// (the callback client tells the registry, registry.End). Nothing here waits for it, so a close
		// event the app makes wait keeps no part of the connection.
		var untrack func()
		if t := c.hub.cfg.Tracker; t != nil {
			id := c.id
			untrack = func() { t.Untrack(id) }
		}
		c.stream.PushClose(callback.Event{Code: code, Reason: end.reason, By: end.by, Identifiers: c.acIdentifiers()}, untrack)
	} else {
		if t := c.hub.cfg.Tracker; t != nil {
			t.Untrack(c.id)
		}
		c.stream.End(nil)
	}
}

// trackedLocked tells the tracker of a change of state or channels; the caller
// holds c.mu.
func (c *Conn) trackedLocked() {
	if t := c.hub.cfg.Tracker; t != nil && c.ws.Load() != nil && !c.torn {
		t.Update(c.id, c.state, slices.Clone(c.channels))
	}
}

// abandon forgets a connection whose 101 was never written.
func (c *Conn) abandon() {
	if !c.decide(closing{code: closeNoFrame, reason: "handshake not completed", by: ByClient}) {
		return
	}
	c.mu.Lock()
	c.torn = true
	c.mu.Unlock()
	c.hub.remove(c)
	c.leaveAll()
	c.acAbandoned() // session.go
	c.log.Debug().Msg("accepted connection abandoned before its 101 was written")
}

// Info is the connection as the events of a webhook describe it.
func (c *Conn) Info() callback.ConnInfo {
	c.mu.Lock()
	info := callback.ConnInfo{ID: c.id, State: c.state, Channels: slices.Clone(c.channels), Claims: c.claims}
	c.mu.Unlock()
	info.ChannelStates = c.acStates()
	return info
}

// Apply carries out the app's reply to a batch of events, in the reply's
// field order: state, unsubscribe, subscribe, send, publish, close.
func (c *Conn) Apply(r *callback.Reply) {
	if c.ac != nil {
		c.acApply(r)
		return
	}
	if r.State != nil {
		c.mu.Lock()
		c.state = *r.State
		c.trackedLocked()
		c.mu.Unlock()
	}
	c.unsubscribe(r.Unsubscribe...)
	if err := c.subscribe(r.Subscribe...); err != nil {
		c.log.Warn().Err(err).Msg("subscribe from the app's reply failed")
	}
	for _, f := range r.Send {
		c.enqueue(outgoing{data: f.Data, binary: f.Binary, size: len(f.Data)})
	}
	c.presenceApply(r.Presence)
	if msgs := r.Messages(c.id); len(msgs) > 0 {
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
func (c *Conn) Fail(why callback.Failure) {
	if why == callback.AppClosed {
		c.closeWith(websocket.CloseNormalClosure, "", ByApp)
		return
	}
	c.closeWith(websocket.CloseInternalServerErr, "app unavailable", ByUpstream)
}

var _ callback.Target = (*Conn)(nil)

// connLog logs with the connection's id. It keeps the node's logger and
// the id rather than a zerolog child logger: zerolog gives every child a
// 500-byte context buffer, which was an eighth of an idle connection's
// heap (a heap profile at 5,000 connections).
type connLog struct {
	l  *zerolog.Logger
	id string
}

func (c connLog) Debug() *zerolog.Event { return c.l.Debug().Str("conn_id", c.id) }
func (c connLog) Info() *zerolog.Event  { return c.l.Info().Str("conn_id", c.id) }
func (c connLog) Warn() *zerolog.Event  { return c.l.Warn().Str("conn_id", c.id) }
func (c connLog) Error() *zerolog.Event { return c.l.Error().Str("conn_id", c.id) }
