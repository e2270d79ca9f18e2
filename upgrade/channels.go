package upgrade

import (
	"context"
	"errors"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// Joins while the broker is away. A join takes effect here at once and in
// the broker, which confirms, before it returns — so that what the app
// publishes after accepting a connection reaches it (membership.go). While
// the broker is away, though, a join does not wait for it: an accept must
// not hang on a broker outage (SPEC §5: accepts still work then). The join
// is kept here, so the connection gets what this node's other subscriptions
// bring, and its channel is subscribed in the broker by one goroutine of
// the hub once the broker is back, all pending channels in one call.

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

// subscribeWait is how long a Subscribe may wait for the broker's
// confirmation: the broker timeout while the broker looks well; only
// briefly while it looks away — an outage must not hold an accept, yet a
// broker back before its health shows it (its subscriber still
// reconnecting) takes the subscription at once.
func (h *Hub) subscribeWait() time.Duration {
	if !h.brokerReady() {
		return min(h.cfg.BrokerTimeout, awayWait)
	}
	return h.cfg.BrokerTimeout
}

// addPending notes a channel whose Subscribe failed while it has members.
func (h *Hub) addPending(name string) {
	h.pendMu.Lock()
	h.pending[name] = struct{}{}
	h.pendMu.Unlock()
}

// startRetry starts the goroutine retrying the pending channels, unless it
// runs.
func (h *Hub) startRetry() {
	h.pendMu.Lock()
	start := !h.retrying && len(h.pending) > 0
	h.retrying = h.retrying || start
	h.pendMu.Unlock()
	if start {
		go h.retryPending()
	}
}

// retryPending subscribes the pending channels in the broker, until there
// are none or the hub stops.
func (h *Hub) retryPending() {
	wait := retryFirst
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-h.ctx.Done():
			h.pendMu.Lock()
			h.retrying = false
			h.pendMu.Unlock()
			return
		case <-t.C:
		}
		if h.retryOnce() {
			wait = retryFirst
		} else {
			wait = min(2*wait, retryMax)
		}
		h.pendMu.Lock()
		if len(h.pending) == 0 {
			h.retrying = false
			h.pendMu.Unlock()
			return
		}
		h.pendMu.Unlock()
		t.Reset(wait)
	}
}

// retryOnce subscribes every pending channel that still has members in one
// broker call, and reports whether it got through. A channel that fails
// again is pending again.
func (h *Hub) retryOnce() bool {
	h.pendMu.Lock()
	todo := h.pending
	h.pending = make(map[string]struct{}, len(todo))
	h.pendMu.Unlock()
	var ops brokerOps
	for name := range todo {
		s := h.chanShard(name)
		s.mu.Lock()
		// Taken meanwhile by a join that found the broker back, or left
		// by its last member (whose leave unsubscribed it): nothing to do.
		if ch := s.chans[name]; ch != nil && ch.pending && !ch.busy {
			ch.pending = false
			ops.add(s.settleLocked(ch), ch)
		}
		s.mu.Unlock()
	}
	if len(ops.subscribe) == 0 && len(ops.unsubscribe) == 0 {
		return true
	}
	h.drain(ops)
	h.pendMu.Lock()
	ok := len(h.pending) == 0
	h.pendMu.Unlock()
	return ok
}
