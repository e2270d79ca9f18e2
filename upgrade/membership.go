package upgrade

import (
	"context"
	"errors"
	"hash/maphash"
	"slices"
	"sync"

	"github.com/cablecar/cablecar/pubsub"
)

// Channel membership. The hub is the one place that knows who is
// subscribed to what on this node: per channel, the set of its local
// connections, in chanShardCount shards by channel name, each behind its
// own lock, so that joins, leaves and deliveries on different channels do
// not wait for each other.
//
// The broker is told only of changes of a channel's local count between 0
// and 1: Subscribe when a channel gets its first member, Unsubscribe when
// it loses its last. A join or leave of many channels makes one broker call
// for all of those that cross 0↔1, and no lock is held during it.
//
// Each connection also lists its channels (Conn.channels, in join order)
// for its events, its record in the registry and the admin lookup. Only
// join and leave below write that list, in step with the sets here, so it
// is derived from them rather than a second truth; keeping it on the
// connection saves a reverse index, and asking every channel shard which
// sets hold a connection would cost each event a scan.
//
// Ordering the broker calls of one channel. A channel's broker side is one
// of three states — out (not subscribed, or confirmed unsubscribed), in
// (confirmed subscribed), unsure (a Subscribe failed: the broker may take
// it later) — plus busy, set while a Subscribe or Unsubscribe of it is in
// flight. Only one call per channel is ever in flight: whoever finds the
// channel not busy and its state at odds with its members (members but
// not in; none but not out) marks it busy and makes the call; when the call
// returns, the same goroutine looks again (settle) and makes the next call
// if the members changed meanwhile. So a last leave (1→0, Unsubscribe in
// flight) racing a first join (0→1) cannot leave the node unsubscribed
// with members: the join finds the channel busy and waits; when the
// Unsubscribe returns, settle sees a member and subscribes again. Nor
// subscribed with none: a Subscribe returning to an empty channel is
// followed by an Unsubscribe. A channel is forgotten once it has no member
// and is out.
//
// Joiners wait for the channel's joinWait, closed when the Subscribe that
// covers them returns, so that what is published after a join returns is
// delivered. While the broker is away, a failed Subscribe leaves the
// channel unsure and pending: its members stay (they get what this node's
// other subscriptions bring), the joiners return, and channels.go retries
// the pending channels in the background.

const chanShardCount = 64

// chanShard is a share of the node's channels, by name.
type chanShard struct {
	mu    sync.RWMutex
	chans map[string]*channel
}

// channel is one channel with members on this node, or with a broker call
// still to finish. Its fields are guarded by its shard's mu.
type channel struct {
	name    string
	members []*Conn // dense, so a delivery copies them out in one move
	// index is where each member is in members, once there are enough of
	// them that a linear search costs more than a map: most channels (a
	// user's own) have one or two members.
	index map[*Conn]int

	state   brokerState
	busy    bool      // a Subscribe or Unsubscribe is in flight
	pending bool      // a Subscribe failed: not tried again but by channels.go's retry
	joined  *joinWait // what joiners wait for; nil when no Subscribe is due
}

type brokerState uint8

const (
	brokerOut    brokerState = iota // not subscribed in the broker
	brokerIn                        // subscribed, confirmed
	brokerUnsure                    // a Subscribe failed: it may yet take effect
)

// joinWait ends when the Subscribe due for a channel returned; err is its
// error, written before done is closed.
type joinWait struct {
	done chan struct{}
	err  error
}

// indexFrom is the member count from which a channel keeps an index.
const indexFrom = 16

func (ch *channel) find(c *Conn) int {
	if ch.index != nil {
		if i, ok := ch.index[c]; ok {
			return i
		}
		return -1
	}
	return slices.Index(ch.members, c)
}

// add adds c and reports whether it was not a member yet.
func (ch *channel) add(c *Conn) bool {
	if ch.find(c) >= 0 {
		return false
	}
	ch.members = append(ch.members, c)
	if ch.index != nil {
		ch.index[c] = len(ch.members) - 1
	} else if len(ch.members) > indexFrom {
		ch.index = make(map[*Conn]int, len(ch.members))
		for i, m := range ch.members {
			ch.index[m] = i
		}
	}
	return true
}

// remove removes c and reports whether it was a member. The last member
// takes its place: the order of members is no one's business.
func (ch *channel) remove(c *Conn) bool {
	i := ch.find(c)
	if i < 0 {
		return false
	}
	last := len(ch.members) - 1
	moved := ch.members[last]
	ch.members[i] = moved
	ch.members[last] = nil
	ch.members = ch.members[:last]
	if ch.index != nil {
		delete(ch.index, c)
		if moved != c {
			ch.index[moved] = i
		}
		if len(ch.members) < indexFrom/2 {
			ch.index = nil
		}
	}
	if cap(ch.members) > 64 && len(ch.members) < cap(ch.members)/4 {
		ch.members = slices.Clip(slices.Clone(ch.members))
	}
	return true
}

func (h *Hub) chanShard(name string) *chanShard {
	return &h.chans[maphash.String(h.seed, name)%chanShardCount]
}

// brokerOp is a broker call settle decided on.
type brokerOp uint8

const (
	opNone brokerOp = iota
	opSubscribe
	opUnsubscribe
)

// settleLocked decides the next broker call for ch, marking it busy, or
// forgets ch when nothing is left of it. The caller holds s.mu and makes
// the call.
func (s *chanShard) settleLocked(ch *channel) brokerOp {
	if ch.busy {
		return opNone
	}
	switch {
	case len(ch.members) > 0 && ch.state != brokerIn && !ch.pending:
		ch.busy = true
		if ch.joined == nil {
			ch.joined = &joinWait{done: make(chan struct{})}
		}
		return opSubscribe
	case len(ch.members) == 0 && ch.state != brokerOut:
		ch.busy, ch.pending = true, false
		return opUnsubscribe
	case len(ch.members) == 0:
		if w := ch.joined; w != nil { // its joiners left already
			ch.joined = nil
			close(w.done)
		}
		delete(s.chans, ch.name)
	}
	return opNone
}

// brokerOps are the broker calls one goroutine owes.
type brokerOps struct {
	subscribe, unsubscribe []*channel
}

func (o *brokerOps) add(op brokerOp, ch *channel) {
	switch op {
	case opSubscribe:
		o.subscribe = append(o.subscribe, ch)
	case opUnsubscribe:
		o.unsubscribe = append(o.unsubscribe, ch)
	}
}

func (o *brokerOps) empty() bool { return len(o.subscribe) == 0 && len(o.unsubscribe) == 0 }

func names(chans []*channel) []string {
	out := make([]string, len(chans))
	for i, ch := range chans {
		out[i] = ch.name
	}
	return out
}

// subscribe makes the Subscribe of chans, all marked busy by the caller,
// waiting for it at most subscribeWait, and settles them: the calls that
// follow (members gone meanwhile) are added to next.
func (h *Hub) subscribe(ctx context.Context, chans []*channel, next *brokerOps) {
	ctx, cancel := context.WithTimeout(ctx, h.subscribeWait())
	err := h.broker.Subscribe(ctx, names(chans)...)
	cancel()
	gone := brokerGone(err)
	if err != nil && !gone {
		h.sawBroker(false)
	}
	retry := false
	for _, ch := range chans {
		s := h.chanShard(ch.name)
		s.mu.Lock()
		ch.busy = false
		switch {
		case err == nil:
			ch.state = brokerIn
		case gone:
			// Nothing will be delivered any more: the joiners fail, and
			// leave; pending keeps settle from trying again meanwhile.
			ch.state, ch.pending = brokerOut, true
		default:
			ch.state = brokerUnsure
			if len(ch.members) > 0 {
				ch.pending = true
				retry = true
				h.addPending(ch.name)
			}
		}
		if w := ch.joined; w != nil {
			ch.joined = nil
			w.err = err
			close(w.done)
		}
		next.add(s.settleLocked(ch), ch)
		s.mu.Unlock()
	}
	if err != nil && !gone {
		h.log.Debug().Err(err).Strs("channels", names(chans)).
			Msg("subscribed on this node; the broker takes the subscriptions when it is back")
	}
	if retry {
		h.startRetry()
	}
}

// unsubscribe makes the Unsubscribe of chans, all marked busy by the
// caller, and settles them: a channel joined again meanwhile is subscribed
// again (added to next). A failed Unsubscribe counts as done: the broker
// forgets a subscription it could not end when its connection ends.
func (h *Hub) unsubscribe(chans []*channel, next *brokerOps) {
	// Not the hub's ctx: connections still leave their channels after it.
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.BrokerTimeout)
	err := h.broker.Unsubscribe(ctx, names(chans)...)
	cancel()
	if err != nil && !brokerGone(err) {
		h.log.Warn().Err(err).Strs("channels", names(chans)).Msg("broker unsubscribe failed")
	}
	for _, ch := range chans {
		s := h.chanShard(ch.name)
		s.mu.Lock()
		ch.busy = false
		ch.state = brokerOut
		next.add(s.settleLocked(ch), ch)
		s.mu.Unlock()
	}
}

// drain makes the calls ops holds and those that follow from them, until
// every channel's broker side agrees with its members.
func (h *Hub) drain(ops brokerOps) {
	for !ops.empty() {
		var next brokerOps
		if len(ops.subscribe) > 0 {
			h.subscribe(h.ctx, ops.subscribe, &next)
		}
		if len(ops.unsubscribe) > 0 {
			h.unsubscribe(ops.unsubscribe, &next)
		}
		ops = next
	}
}

// join subscribes c to channels: here at once; in the broker before it
// returns, or, while the broker is away, as soon as it is back. A name
// that is not valid is left out and reported; the others are joined. The
// only other error is a broker that is closed: then c joins none.
func (h *Hub) join(ctx context.Context, c *Conn, channels []string) error {
	var errs []error
	c.mu.Lock()
	if c.torn {
		c.mu.Unlock()
		return nil
	}
	fresh := make([]string, 0, len(channels))
	for _, name := range channels {
		if err := pubsub.ValidateChannel(name); err != nil {
			errs = append(errs, err)
			continue
		}
		if !slices.Contains(c.channels, name) && !slices.Contains(fresh, name) {
			fresh = append(fresh, name)
		}
	}
	c.mu.Unlock()
	if len(fresh) == 0 {
		return errors.Join(errs...)
	}

	var (
		ops   brokerOps
		waits []*joinWait
		stale []*channel // pending, their broker seen away
	)
	// need is what a channel c joined asks of the broker, under its
	// shard's lock.
	need := func(s *chanShard, ch *channel) {
		if ch.busy && ch.joined == nil {
			// An Unsubscribe in flight: when it returns, settle sees the
			// member and subscribes again, ending this wait.
			ch.joined = &joinWait{done: make(chan struct{})}
		}
		ops.add(s.settleLocked(ch), ch)
		if w := ch.joined; w != nil {
			waits = append(waits, w)
		}
	}
	for _, name := range fresh {
		s := h.chanShard(name)
		s.mu.Lock()
		ch := s.chans[name]
		if ch == nil {
			ch = &channel{name: name}
			s.chans[name] = ch
		}
		added := ch.add(c)
		switch {
		case !added:
		case ch.pending && !ch.busy:
			stale = append(stale, ch)
		case ch.state != brokerIn || ch.busy:
			need(s, ch)
		}
		s.mu.Unlock()
		if added {
			h.presenceCounted(name)
		}
	}
	// A pending channel waits for the retry while the broker is away; but
	// if it is back before the retry noticed, this join subscribes now.
	// (Its health is not looked at under a lock: that may ask the broker.)
	if len(stale) > 0 && h.brokerReady() {
		for _, ch := range stale {
			s := h.chanShard(ch.name)
			s.mu.Lock()
			if ch.pending && !ch.busy && len(ch.members) > 0 {
				ch.pending = false
				need(s, ch)
			}
			s.mu.Unlock()
		}
	}
	if len(ops.subscribe) > 0 {
		var next brokerOps
		h.subscribe(ctx, ops.subscribe, &next)
		if !next.empty() {
			go h.drain(next)
		}
	}
	// The others' calls: a Subscribe in flight, or an Unsubscribe after
	// which the channel is subscribed again. Past ctx, the join holds
	// here, and the broker takes it when that call is done.
	var gone error
	for _, w := range waits {
		select {
		case <-w.done:
			if brokerGone(w.err) {
				gone = w.err
			}
		case <-ctx.Done():
		}
	}
	if gone != nil {
		h.leave(c, fresh)
		return errors.Join(append(errs, gone)...)
	}

	c.mu.Lock()
	if c.torn {
		c.mu.Unlock()
		// Torn down while joining: teardown has left the channels it
		// listed, not these.
		h.leave(c, fresh)
		return errors.Join(errs...)
	}
	for _, name := range fresh {
		if !slices.Contains(c.channels, name) {
			c.channels = append(c.channels, name)
		}
	}
	c.trackedLocked()
	c.mu.Unlock()
	return errors.Join(errs...)
}

// leave takes c out of channels, here and, for those it was the last member
// of, in the broker, before it returns. It does not touch c.channels.
func (h *Hub) leave(c *Conn, channels []string) {
	var ops brokerOps
	for _, name := range channels {
		s := h.chanShard(name)
		s.mu.Lock()
		removed := false
		if ch := s.chans[name]; ch != nil && ch.remove(c) {
			ops.add(s.settleLocked(ch), ch)
			removed = true
		}
		s.mu.Unlock()
		if removed {
			h.presenceCounted(name)
		}
	}
	h.drain(ops)
}

// subscribe joins c to channels (see Hub.join).
func (c *Conn) subscribe(channels ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.hub.cfg.BrokerTimeout)
	defer cancel()
	return c.hub.join(ctx, c, channels)
}

// unsubscribe takes c out of those of channels it is in.
func (c *Conn) unsubscribe(channels ...string) {
	c.mu.Lock()
	left := make([]string, 0, len(channels))
	for _, name := range channels {
		if i := slices.Index(c.channels, name); i >= 0 {
			c.channels = slices.Delete(c.channels, i, i+1)
			left = append(left, name)
		}
	}
	if len(left) > 0 {
		c.trackedLocked()
	}
	c.mu.Unlock()
	c.hub.leave(c, left)
	c.presenceUnsubscribed(left)
}

// leaveAll takes c out of every channel, at its end: the caller has set
// c.torn, so no join adds to the list meanwhile.
func (c *Conn) leaveAll() {
	c.mu.Lock()
	channels := c.channels
	c.channels = nil
	c.mu.Unlock()
	c.hub.leave(c, channels)
}
