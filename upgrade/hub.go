package upgrade

import (
	"context"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/pubsub"
)

const shardCount = 64

// shard holds a slice of the node's connections, by id.
type shard struct {
	mu    sync.RWMutex
	conns map[string]*Conn
}

// Hub is one node's set of connections: the registry the broker delivers
// into (it is the pubsub.Sink), the owner of channel membership (who on
// this node is subscribed to what, membership.go; fan-out in fanout.go),
// and the one heartbeat ticker that pings every connection, finds silent
// ones and cuts close handshakes that take too long. No connection has a
// timer of its own.
type Hub struct {
	cfg     Config
	log     zerolog.Logger
	broker  pubsub.Broker
	cb      *callback.Client
	metrics *metrics
	node    string // this process's part of every connection id
	seed    maphash.Seed

	shards [shardCount]shard
	ac     *hubAC       // ActionCable (actioncable_hub.go); nil in tests that build a bare hub
	pres   *hubPresence // presence (presence.go); nil when off
	// histLive counts connections with a history side (history.go), so
	// that a node without any spends nothing on them per broadcast.
	histLive atomic.Int64
	chans    [chanShardCount]chanShard

	// pending are the channels whose Subscribe failed (the broker was
	// away) while they had members; retrying says the goroutine retrying
	// them runs (channels.go).
	pendMu   sync.Mutex
	pending  map[string]struct{}
	retrying bool

	// The broker's health as last seen, so that accepts do not each ask.
	readyAt atomic.Int64 // unix nanos of the last check
	readyOK atomic.Bool

	// mu orders registration against shutdown: once closing is set no
	// connection is added, so Shutdown's sweep sees every one.
	mu      sync.Mutex
	closing bool
	live    sync.WaitGroup // connections not yet torn down

	// ctx ends with the hub: broker calls made for the hub alone end with it.
	ctx      context.Context
	cancel   context.CancelFunc
	stop     chan struct{}
	stopOnce sync.Once
	tickerWG sync.WaitGroup
}

func newHub(cfg Config, log zerolog.Logger, broker pubsub.Broker, m *metrics) *Hub {
	h := &Hub{
		cfg:     cfg,
		log:     log,
		broker:  broker,
		metrics: m,
		node:    cfg.Node,
		seed:    maphash.MakeSeed(),
		pending: map[string]struct{}{},
		stop:    make(chan struct{}),
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	if h.node == "" {
		h.node = pubsub.NewNodeID()
	}
	for i := range h.shards {
		h.shards[i].conns = map[string]*Conn{}
	}
	for i := range h.chans {
		h.chans[i].chans = map[string]*channel{}
	}
	return h
}

// newID returns a connection id unique across nodes and restarts.
func (h *Hub) newID() string { return pubsub.NewConnectionID(h.node) }

func (h *Hub) shard(id string) *shard {
	return &h.shards[maphash.String(h.seed, id)%shardCount]
}

// add registers c; it fails once shutdown has begun.
func (h *Hub) add(c *Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	s := h.shard(c.id)
	s.mu.Lock()
	s.conns[c.id] = c
	s.mu.Unlock()
	h.ac.counted(c, 1)
	h.histCounted(c, 1)
	h.live.Add(1)
	h.metrics.open.Inc()
	return true
}

// remove forgets c; its channels are left by the caller.
func (h *Hub) remove(c *Conn) {
	s := h.shard(c.id)
	s.mu.Lock()
	// A restored session's connection may have taken the id already.
	ok := s.conns[c.id] == c
	if ok {
		delete(s.conns, c.id)
	}
	s.mu.Unlock()
	if ok {
		h.presenceGone(c)
		h.ac.counted(c, -1)
		h.histCounted(c, -1)
		h.metrics.open.Dec()
		h.live.Done()
	}
}

func (h *Hub) get(id string) *Conn {
	s := h.shard(id)
	s.mu.RLock()
	c := s.conns[id]
	s.mu.RUnlock()
	return c
}

// Count is the number of connections registered on this node.
func (h *Hub) Count() int {
	n := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		n += len(s.conns)
		s.mu.RUnlock()
	}
	return n
}

// Execute carries out an admin /send or /close for a local connection.
func (h *Hub) Execute(cmd pubsub.Command) bool {
	c := h.get(cmd.Connection)
	if c == nil {
		return false
	}
	switch cmd.Kind {
	case pubsub.CommandSend:
		if c.acSendCommand(cmd) { // ActionCable: actioncable_hub.go
			break
		}
		c.enqueue(outgoing{data: cmd.Data, binary: cmd.Binary, size: len(cmd.Data)})
	case pubsub.CommandClose:
		c.acSetDisconnect(actioncable.ReasonRemote, !cmd.NoReconnect) // ActionCable: actioncable.go
		c.closeWith(cmd.Code, cmd.Reason, ByApp)
	}
	return true
}

var _ pubsub.Sink = (*Hub)(nil)

// closeChannel closes every connection here subscribed to ch, as a
// command's close would close one (admin /close with "channel", SPEC §4):
// an ActionCable connection streaming ch is a subscriber too, and is told
// disconnect remote.
func (h *Hub) closeChannel(ch string, cl *pubsub.ChannelClose) {
	s := h.chanShard(ch)
	s.mu.RLock()
	var members []*Conn
	if c := s.chans[ch]; c != nil {
		members = slices.Clone(c.members)
	}
	s.mu.RUnlock()
	for _, c := range members {
		c.acSetDisconnect(actioncable.ReasonRemote, !cl.NoReconnect)
		c.closeWith(cl.Code, cl.Reason, ByApp)
	}
}

// Fence closes the given connections with 1012 after this node's lease
// lapsed: other nodes may have told the app they are gone (node_lost), so
// they are not kept open, and send no close event of their own. Their
// clients reconnect, to this node or another.
func (h *Hub) Fence(ids []string) {
	for _, id := range ids {
		if c := h.get(id); c != nil {
			c.mu.Lock()
			c.fenced = true
			c.mu.Unlock()
			c.closeWith(websocket.CloseServiceRestart, "lost contact with the cluster", ByNodeLost)
		}
	}
}

// start runs the heartbeat until stop.
func (h *Hub) start() {
	h.tickerWG.Add(1)
	go func() {
		defer h.tickerWG.Done()
		t := time.NewTicker(h.cfg.tick())
		defer t.Stop()
		var batch []*Conn
		for {
			select {
			case <-h.stop:
				return
			case now := <-t.C:
				batch = h.sweep(now, batch)
			}
		}
	}()
}

// sweep is one heartbeat: every connection is visited once; a shard's lock
// is held only while its connections are copied out.
func (h *Hub) sweep(now time.Time, batch []*Conn) []*Conn {
	n := now.UnixNano()
	acPing := h.ac.pingFrame(now)
	for i := range h.shards {
		s := &h.shards[i]
		batch = batch[:0]
		s.mu.RLock()
		for _, c := range s.conns {
			batch = append(batch, c)
		}
		s.mu.RUnlock()
		for _, c := range batch {
			c.heartbeat(n)
			if acPing != nil {
				c.acPing(acPing)
			}
		}
	}
	clear(batch)
	return batch[:0]
}

// Shutdown refuses new connections, closes every open one with 1012 so its
// client reconnects elsewhere, and waits, until ctx ends, for every one to
// be torn down. The close webhooks are the callback client's to wait for.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
	h.shutdownEvents(ctx) // shutdown.go: the app's goodbyes come before the 1012
	// Clients get the usual time to answer our close frame, but no more
	// than a third of what is left, so that the close events still have
	// time to reach the app when a client never answers.
	wait := h.cfg.CloseTimeout
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d)/3)
	}
	n := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		conns := make([]*Conn, 0, len(s.conns))
		for _, c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.RUnlock()
		for _, c := range conns {
			c.closeWithin(websocket.CloseServiceRestart, "service restart", ByShutdown, wait)
			n++
		}
	}
	h.log.Info().Int("connections", n).Msg("closing every WebSocket with 1012")
	done := make(chan struct{})
	go func() { h.live.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		// Whatever has not finished its close handshake is cut now; its
		// teardown still queues the close event.
		for i := range h.shards {
			s := &h.shards[i]
			s.mu.RLock()
			for _, c := range s.conns {
				c.cut()
			}
			s.mu.RUnlock()
		}
		select {
		case <-done:
		case <-time.After(time.Second):
		}
	}
	h.stopOnce.Do(func() { close(h.stop); h.cancel() })
	h.tickerWG.Wait()
	return err
}
