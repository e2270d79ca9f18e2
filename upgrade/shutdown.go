package upgrade

import (
	"context"
	"time"
)

// shutdownEvents posts the shutdown event (SPEC §5) to every open
// connection that asked for it in Cablecar-Events and waits until the app
// answered them all, for at most websocket.shutdown_grace (and never more
// than a third of what is left of shutdown_timeout, so that the close
// events keep their time). What the replies send is queued on the
// connections by then, ahead of the 1012 that Shutdown queues next: the
// writer sends the queue before the close frame. A reply that comes later
// finds its connection closing, and what it sends is dropped.
//
// The hub refuses new connections already, so the set looked at is final.
// Connections whose open event is not yet queued get no event: the app
// has not heard they opened.
func (h *Hub) shutdownEvents(ctx context.Context) {
	grace := h.cfg.ShutdownGrace
	if d, ok := ctx.Deadline(); ok {
		grace = min(grace, time.Until(d)/3)
	}
	if grace <= 0 {
		return
	}
	var asked []*Conn
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for _, c := range s.conns {
			if c.events.has(eventShutdown) {
				asked = append(asked, c)
			}
		}
		s.mu.RUnlock()
	}
	var waits []<-chan struct{}
	for _, c := range asked {
		if done := c.pushShutdown(); done != nil {
			waits = append(waits, done)
		}
	}
	if len(waits) == 0 {
		return
	}
	start := time.Now()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	answered := 0
	for _, done := range waits {
		select {
		case <-done:
			answered++
		case <-timer.C:
			h.log.Warn().Int("connections", len(waits)).Int("answered", answered).Dur("grace", grace).
				Msg("websocket.shutdown_grace ran out before the app answered every shutdown event: closing them all now")
			return
		case <-ctx.Done():
			return
		}
	}
	h.log.Info().Int("connections", len(waits)).Dur("took", time.Since(start)).Msg("the app answered every shutdown event")
}

// pushShutdown queues the shutdown event on an open connection and
// returns what closes once the app's reply was applied; nil when the
// connection is not open (its open event not yet queued, or already
// closing).
func (c *Conn) pushShutdown() <-chan struct{} {
	// opened is set after the stream is made and the open event queued
	// (run): the shutdown event comes after it.
	if !c.opened.Load() {
		return nil
	}
	if c.ending() {
		return nil
	}
	return c.stream.PushShutdown()
}
