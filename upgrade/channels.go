package upgrade

import (
	"context"
	"errors"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// Channel subscriptions. A join takes effect here at once and in the
// broker, which confirms, before it returns — so that what the app publishes
// after accepting a connection reaches it. While the broker is away, though,
// a join does not wait for it: an accept must not hang on a broker outage
// (SPEC §5: accepts still work then). The join is kept here, so the
// connection gets what this node's other subscriptions bring, and is made
// in the broker by one goroutine of the hub once the broker is back.

const (
	// readyFresh is how long a look at the broker's health is reused, so
	// that a burst of accepts does not ask it once each.
	readyFresh = 100 * time.Millisecond
	// readyWait bounds one look.
	readyWait = time.Second
	// awayWait is how long a subscription waits for a broker that looks
	// away.
	awayWait = 100 * time.Millisecond
	// The pending joins are retried after retryFirst, backing off to
	// retryMax while the broker stays away.
	retryFirst = 100 * time.Millisecond
	retryMax   = 2 * time.Second
)

// brokerReady reports whether the broker is reachable, as last seen.
func (h *Hub) brokerReady() bool {
	if time.Now().UnixNano()-h.readyAt.Load() < int64(readyFresh) {
		return h.readyOK.Load()
	}
	ctx, cancel := context.WithTimeout(h.ctx, readyWait)
	err := h.broker.Ready(ctx)
	cancel()
	h.sawBroker(err == nil)
	return err == nil
}

func (h *Hub) sawBroker(ok bool) {
	h.readyOK.Store(ok)
	h.readyAt.Store(time.Now().UnixNano())
}

// brokerGone reports errors after which retrying is pointless: the
// broker is closed (shutdown), or was never started.
func brokerGone(err error) bool {
	return errors.Is(err, pubsub.ErrClosed) || errors.Is(err, pubsub.ErrNotStarted)
}

// join subscribes c to channel: here at once; in the broker before it
// returns, or, while the broker is away, as soon as it is back. It fails
// only for a channel name that is not valid, or a broker that is closed.
func (h *Hub) join(ctx context.Context, c *Conn, channel string) error {
	if err := pubsub.ValidateChannel(channel); err != nil {
		return err
	}
	err := h.brokerSubscribe(ctx, channel)
	if brokerGone(err) {
		return err
	}
	h.chmu.Lock()
	addTo(h.channels, channel, c)
	start := false
	if err != nil {
		addTo(h.pending, channel, c)
		start, h.retrying = !h.retrying, true
	}
	h.chmu.Unlock()
	if err != nil {
		h.log.Debug().Err(err).Str("conn_id", c.id).Str("channel", channel).
			Msg("subscribed on this node; the broker takes the subscription when it is back")
	}
	if start {
		go h.retryPending()
	}
	return nil
}

// brokerSubscribe subscribes in the broker. While the broker looks well it
// waits the broker timeout for the confirmation; while it looks away, only
// briefly: an outage must not hold an accept, yet a broker back before its
// health shows it (its subscriber still reconnecting) takes the
// subscription at once.
func (h *Hub) brokerSubscribe(ctx context.Context, channel string) error {
	wait := h.cfg.BrokerTimeout
	if !h.brokerReady() {
		wait = min(wait, awayWait)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	err := h.broker.Subscribe(ctx, channel)
	if err != nil && !brokerGone(err) {
		h.sawBroker(false)
	}
	return err
}

// leave undoes join.
func (h *Hub) leave(c *Conn, channel string) {
	h.chmu.Lock()
	removeFrom(h.channels, channel, c)
	pending := removeFrom(h.pending, channel, c)
	h.chmu.Unlock()
	if !pending { // a pending join is not counted by the broker
		h.unsubscribe(channel)
	}
}

func (h *Hub) unsubscribe(channel string) {
	// Not the hub's ctx: connections still leave their channels after it.
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.BrokerTimeout)
	defer cancel()
	if err := h.broker.Unsubscribe(ctx, channel); err != nil && !brokerGone(err) {
		h.log.Warn().Err(err).Str("channel", channel).Msg("broker unsubscribe failed")
	}
}

// retryPending makes the pending joins in the broker, until there are none
// or the hub stops.
func (h *Hub) retryPending() {
	wait := retryFirst
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-t.C:
		}
		if h.retryOnce() {
			wait = retryFirst
		} else {
			wait = min(2*wait, retryMax)
		}
		h.chmu.Lock()
		if len(h.pending) == 0 {
			h.retrying = false
			h.chmu.Unlock()
			return
		}
		h.chmu.Unlock()
		t.Reset(wait)
	}
}

// retryOnce subscribes pending joins in the broker one by one, each
// counted there as any other join, and reports whether it got through
// them all. The first join of a channel waits for the broker's
// confirmation; the others of the same channel then return at once.
func (h *Hub) retryOnce() bool {
	for {
		h.chmu.Lock()
		var (
			c       *Conn
			channel string
		)
	pick:
		for ch, set := range h.pending {
			for conn := range set {
				c, channel = conn, ch
				break pick
			}
		}
		h.chmu.Unlock()
		if c == nil {
			return true
		}
		err := h.brokerSubscribe(h.ctx, channel)
		if brokerGone(err) {
			h.chmu.Lock()
			clear(h.pending)
			h.chmu.Unlock()
			return true
		}
		if err != nil {
			return false
		}
		h.chmu.Lock()
		still := removeFrom(h.pending, channel, c)
		h.chmu.Unlock()
		if !still {
			// c left (or left and joined again, taken by the broker then)
			// while this subscription was made: the broker's count keeps
			// only the joins that are here.
			h.unsubscribe(channel)
		} else {
			c.log.Debug().Str("channel", channel).Msg("subscribed in the broker, now that it is back")
		}
	}
}

func addTo(m map[string]map[*Conn]struct{}, channel string, c *Conn) {
	set := m[channel]
	if set == nil {
		set = map[*Conn]struct{}{}
		m[channel] = set
	}
	set[c] = struct{}{}
}

// removeFrom removes c from channel's set and reports whether it was there.
func removeFrom(m map[string]map[*Conn]struct{}, channel string, c *Conn) bool {
	set := m[channel]
	if _, ok := set[c]; !ok {
		return false
	}
	delete(set, c)
	if len(set) == 0 {
		delete(m, channel)
	}
	return true
}
