package registry

import (
	"context"
	"fmt"
)

// HandOver notes the close events this node numbered and could not
// deliver before shutting down (the callback client's Undelivered), by
// connection id. Leave then leaves their records in Redis with the event,
// and the survivor that reaps this node posts each with its own id rather
// than as a node_lost close (SPEC §5), so that the app drops it should this
// node's last try have reached it after all. Ids not tracked are ignored:
// their close event was delivered, or the app does not want one.
func (r *Registry) HandOver(closes map[string]CloseEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, ev := range closes {
		if e, ok := r.live[id]; ok {
			e.rec.Close = &ev
		}
	}
}

// Leave is a clean shutdown's last word, once this node's own close
// events were delivered or shutdown_timeout gave up on them: it stops Run.
// When nothing is tracked any more, it deletes the node's records, lease
// and claim, and its entry in the node set. A connection still tracked is
// one whose close event was not delivered (the app is down): its record
// is written as it stands (with its close event, see HandOver), the lease
// is released rather than left to lapse, and the node stays listed, so
// that a surviving node reaps it at its next round and posts those close
// events (SPEC §5).
func (r *Registry) Leave(ctx context.Context) error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.flushed) // Written returns
		r.flushed = make(chan struct{})
	}
	r.mu.Unlock()
	r.leaveOnce.Do(func() { close(r.leaving) })
	if r.started.Load() {
		select {
		case <-r.runDone:
		case <-ctx.Done():
			return fmt.Errorf("registry: leave: %w", ctx.Err())
		}
	}
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	ops := r.leftOver()
	left := 0
	for i := range ops {
		if ops[i].set {
			left++
		}
	}
	if left == 0 {
		// Records first: should the rest fail, a survivor finds a node
		// without a lease and without records, and forgets it.
		if err := r.rdb.Del(ctx, r.keys.conns, r.keys.lease, r.keys.reaper).Err(); err != nil {
			return fmt.Errorf("registry: leave: deleting this node's records: %w", err)
		}
		if err := r.rdb.SRem(ctx, r.nodes, r.node).Err(); err != nil {
			return fmt.Errorf("registry: leave: %w", err)
		}
		return nil
	}
	// The records are written while the lease still holds (no survivor
	// reaps a node with a lease, so none can forget it halfway), the node
	// is listed, and only then is the lease released.
	if _, err := r.send(ctx, ops, nil); err != nil {
		return fmt.Errorf("registry: leave: writing the records of %d connections whose close events were not delivered: %w", left, err)
	}
	if err := r.rdb.SAdd(ctx, r.nodes, r.node).Err(); err != nil {
		return fmt.Errorf("registry: leave: %w", err)
	}
	if err := r.rdb.Del(ctx, r.keys.lease, r.keys.reaper).Err(); err != nil {
		return fmt.Errorf("registry: leave: releasing the lease: %w", err)
	}
	r.log.Warn().Int("connections", left).
		Msg("registry: left the close events this node could not deliver in Redis: a surviving node posts them")
	return nil
}

// leftOver empties the registry into the writes that bring Redis up to
// date on leaving: the records of what is still tracked or was given up
// by a fence, and the deletion of the records of connections untracked
// since the last flush.
func (r *Registry) leftOver() []op {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := make([]op, 0, len(r.live)+len(r.given)+len(r.dirty))
	for id, e := range r.live {
		ops = append(ops, op{id: id, rec: e.rec, set: true})
	}
	for id, e := range r.given {
		if _, ok := r.live[id]; !ok {
			ops = append(ops, op{id: id, rec: e.rec, set: true})
		}
	}
	for id := range r.dirty {
		_, live := r.live[id]
		_, given := r.given[id]
		if !live && !given {
			ops = append(ops, op{id: id})
		}
	}
	clear(r.live)
	clear(r.dirty)
	clear(r.given)
	r.m.conns.Set(0)
	return ops
}
