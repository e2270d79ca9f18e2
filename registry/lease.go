package registry

import (
	"context"
	"sync"
	"time"
)

// Run keeps this node's lease and records in Redis and, every lease_ttl/3
// or so, looks for nodes whose lease lapsed and posts their close events
// through post (see PostFunc). It returns when ctx ends or Leave is
// called; Redis being away is logged and retried, never fatal. It is
// called once. With post nil, this node keeps its own records but reaps
// no other.
//
// Run's ctx is not the shutdown signal: cancelling it abandons the node's
// records for the survivors to reap (node_lost) once the lease lapses. A
// clean shutdown delivers its own close events, then calls Leave, which
// stops Run. Close events of other nodes still waiting then are abandoned
// (their records stay, and the claims on their nodes are released, for
// another survivor).
func (r *Registry) Run(ctx context.Context, post PostFunc) {
	if !r.started.CompareAndSwap(false, true) {
		r.log.Error().Msg("registry: Run called twice; the second call does nothing")
		return
	}
	defer close(r.runDone)
	select {
	case <-r.leaving:
		return
	default:
	}
	r.post = post
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-r.leaving:
			cancel()
		case <-ctx.Done():
		}
	})
	wg.Go(func() { r.writeLoop(ctx) })
	if post != nil {
		wg.Go(func() { r.reapLoop(ctx) })
	}
	defer func() {
		wg.Wait()
		// Only now: reapLoop starts jobs, and has returned.
		r.jobs.Wait()
	}()

	failing := time.Time{}
	t := time.NewTicker(r.ttl / 3)
	defer t.Stop()
	for {
		err := r.refresh(ctx)
		switch {
		case err == nil:
			r.lastOK, r.fenced = time.Now(), false
			if !failing.IsZero() {
				r.log.Info().Dur("after_ms", time.Since(failing)).Msg("registry: lease in Redis refreshed again")
				failing = time.Time{}
			}
			if post != nil && r.stale.Load() > 0 {
				r.startPostingOwn(ctx)
			}
		case ctx.Err() != nil:
		default:
			if !r.fenced && !r.lastOK.IsZero() && time.Since(r.lastOK) >= r.ttl {
				r.fenced = true
				r.stale.Add(1)
				ids := r.fence()
				r.log.Error().Int("connections", len(ids)).Dur("lease_ttl_ms", r.ttl).
					Msg("registry: this node's lease has lapsed, so other nodes may have sent node_lost closes for its connections: closing them (1012) without close events of their own")
				if r.onLapse != nil && len(ids) > 0 {
					r.onLapse(ids)
				}
			}
			r.m.leaseFailures.Inc()
			ev := r.log.Debug()
			if failing.IsZero() {
				failing = time.Now()
				ev = r.log.Warn()
			}
			ev.Err(err).Dur("lease_ttl_ms", r.ttl).
				Msg("registry: refreshing this node's lease in Redis failed; retrying (other nodes take this node for lost once lease_ttl passes without one)")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fence gives up every tracked connection: they leave memory, their
// records stay in Redis. The entries move as they are: nothing is
// encoded under the lock.
func (r *Registry) fence() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.live))
	for id, e := range r.live {
		ids = append(ids, id)
		delete(r.dirty, id)
		r.given[id] = e
	}
	r.m.conns.Sub(float64(len(r.live)))
	r.live = make(map[string]*entry)
	return ids
}

// refresh extends the lease, or takes it again when it was gone, and
// lists the node. The first time it succeeds, the writer may start: a
// record is never in Redis before its node is listed, or it would be found
// by no reaper.
func (r *Registry) refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.ttl/3)
	defer cancel()
	ok, err := r.rdb.SetXX(ctx, r.keys.lease, r.node, r.ttl).Result()
	if err != nil {
		r.healthy.Store(0)
		return err
	}
	if !ok {
		// Gone: this node is new, or Redis restarted empty or lost data,
		// or this node was cut off for longer than the lease and another
		// may have reaped it. Its records are written again, after the
		// lease (a survivor deletes records only while the lease is
		// missing) and the listing.
		if err := r.rdb.Set(ctx, r.keys.lease, r.node, r.ttl).Err(); err != nil {
			r.healthy.Store(0)
			return err
		}
		// Other nodes may have lost theirs too and not noticed yet.
		r.healthy.Store(time.Now().UnixNano())
		r.rewrite = true
	} else if r.healthy.Load() == 0 {
		r.healthy.Store(time.Now().UnixNano())
	}
	// Only once the lease is there: a node listed without one is lost.
	// Listed every time, in case a reaper forgot this node while it was
	// cut off.
	if err := r.rdb.SAdd(ctx, r.nodes, r.node).Err(); err != nil {
		return err
	}
	if r.rewrite {
		r.rewrite = false
		n := r.rewriteAll()
		select {
		case <-r.joined:
			r.log.Warn().Int("connections", n).
				Msg("registry: this node's lease was gone from Redis (Redis restarted or failed over, or this node was cut off longer than lease_ttl): writing every connection record again")
		default:
		}
	}
	r.joinOnce.Do(func() { close(r.joined) })
	return nil
}

// rewriteAll marks every live record for writing, and returns how many.
func (r *Registry) rewriteAll() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id := range r.live {
		r.markLocked(id)
	}
	return len(r.live)
}
