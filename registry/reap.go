package registry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// PostFunc posts the close event of rec, a connection of node, which is
// lost (or, node being this one, was given up by a fence). It hands the
// event over and returns without waiting for the app: a reap round never
// waits for an app that is down, however long close events are retried.
//
// It returns false when it cannot take rec now (too many close events
// wait on this node already): the record stays in Redis and is offered
// again once some of those handed over settled, or a round later.
// Otherwise settled is called once, from any goroutine and without
// blocking, when the close event was delivered or finally dropped
// (refused by the app, retried for close_retry_for, pushed out of the
// queue, or a record that can never be posted): the record is deleted
// then, and only then. It is not called for an event abandoned because
// stop closed (this node stopped posting that node's close events: its
// claim lapsed, the node's lease came back, or this node is leaving) or
// because this node shut down: its record then stays for whoever reaps
// next, who posts it again with the same event id, for the app to drop.
type PostFunc func(node string, rec ConnRecord, stop <-chan struct{}, settled func()) bool

// reapLoop looks for lost nodes every lease_ttl/3, jittered so that the
// survivors do not all look at once.
func (r *Registry) reapLoop(ctx context.Context) {
	t := time.NewTimer(r.jitter())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// A lease that lapsed while Redis was away from everyone (a
		// restart from disk, a failover) says nothing about its node:
		// look only once this node has held its own for a whole lease_ttl,
		// in which time every node alive has refreshed its own.
		if h := r.healthy.Load(); h != 0 && time.Since(time.Unix(0, h)) >= r.ttl {
			if err := r.reapRound(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn().Err(err).Msg("registry: looking for lost nodes failed; trying again next round")
			}
		}
		t.Reset(r.jitter())
	}
}

func (r *Registry) jitter() time.Duration {
	base := r.ttl / 3
	return base*4/5 + rand.N(base*2/5+1)
}

// reapRound claims every node whose lease lapsed and that no node is
// reaping, and starts posting its close events. It takes a few round
// trips per lost node; the posting goes on in a goroutine of its own for
// as long as the app takes, holding the claim.
func (r *Registry) reapRound(ctx context.Context) error {
	defer r.rounds.Add(1)
	nodes, err := r.rdb.SMembers(ctx, r.nodes).Result()
	if err != nil {
		return err
	}
	pipe := r.rdb.Pipeline()
	own := pipe.Exists(ctx, r.keys.lease)
	leases := make([]*redis.IntCmd, len(nodes))
	for i, n := range nodes {
		if n != r.node {
			leases[i] = pipe.Exists(ctx, keysOf(r.pfx, n).lease)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	if own.Val() == 0 {
		// Redis lost this node's lease too: the others' may be gone for
		// the same reason. The next refresh sorts it out.
		return nil
	}
	var lost []string
	for i, n := range nodes {
		if leases[i] != nil && leases[i].Val() == 0 {
			lost = append(lost, n)
		}
	}
	rand.Shuffle(len(lost), func(i, j int) { lost[i], lost[j] = lost[j], lost[i] })
	for _, n := range lost {
		if ctx.Err() != nil {
			return nil
		}
		if !r.startReaping(n) {
			continue // this node is posting its close events already
		}
		claimed, err := r.claim(ctx, n)
		if err != nil || !claimed {
			r.stopReaping(n)
			if err != nil && ctx.Err() == nil {
				r.log.Warn().Err(err).Str("lost_node", n).Msg("registry: claiming a lost node failed; trying again next round")
			}
			continue
		}
		r.jobs.Go(func() {
			defer r.stopReaping(n)
			r.reapNode(ctx, n)
		})
	}
	return nil
}

// startReaping notes that this node posts node's close events; false when
// it does already.
func (r *Registry) startReaping(node string) bool {
	r.reapMu.Lock()
	defer r.reapMu.Unlock()
	if r.reaping[node] {
		return false
	}
	r.reaping[node] = true
	return true
}

func (r *Registry) stopReaping(node string) {
	r.reapMu.Lock()
	delete(r.reaping, node)
	r.reapMu.Unlock()
}

// Scripts on one node's keys (KEYS: lease, conns, reaper), which share a
// slot.
var (
	// ARGV: me, ids… → deleted count; -1 the lease is back; -2 the claim
	// is not mine.
	reapDelScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -2 end
return redis.call('HDEL', KEYS[2], unpack(ARGV, 2))`)
	// ARGV: me → 1 forgotten; 0 records are left; -1 the lease is back.
	forgetScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('HLEN', KEYS[2]) > 0 then return 0 end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 1`)
	// KEYS: reaper; ARGV: me, ttl ms → 1 extended, 0 not mine.
	extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)
	// KEYS: reaper; ARGV: me.
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)
)

var errLeaseBack = errors.New("its lease is back")

// claim takes node for this node to reap: false when another survivor has
// it, or its lease is back (then the claim is let go at once).
func (r *Registry) claim(ctx context.Context, node string) (bool, error) {
	if node == r.node {
		return false, nil
	}
	k := keysOf(r.pfx, node)
	won, err := r.rdb.SetNX(ctx, k.reaper, r.node, r.ttl).Result()
	if err != nil || !won {
		return false, err // another survivor has it
	}
	if r.afterClaim != nil {
		r.afterClaim(node)
	}
	back, err := r.rdb.Exists(ctx, k.lease).Result()
	if err == nil && back == 0 {
		return true, nil
	}
	r.release(ctx, k)
	if err != nil {
		return false, err
	}
	r.log.Info().Str("lost_node", node).Msg("registry: a node's lease lapsed and came back: not lost")
	return false, nil
}

// release lets the claim on a node go, so that another round (or node)
// may try at once rather than after the claim lapses.
func (r *Registry) release(ctx context.Context, k nodeKeys) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.ttl/3)
	_ = releaseScript.Run(rctx, r.rdb, []string{k.reaper}, r.node).Err()
	cancel()
}

// reapNode posts the close events of a node this node claimed, deleting
// each record once its event settled, then forgets the node.
func (r *Registry) reapNode(parent context.Context, node string) {
	k := keysOf(r.pfx, node)
	ctx, cancel := context.WithCancel(parent)
	var wg sync.WaitGroup
	// The claim lapses like a lease should this node die while reaping.
	wg.Go(func() { r.holdClaim(ctx, cancel, k.reaper) })
	err := r.reapClaimed(ctx, node, k)
	cancel()
	wg.Wait()
	if err != nil {
		r.release(ctx, k)
		if parent.Err() == nil {
			r.log.Warn().Err(err).Str("lost_node", node).Msg("registry: posting the close events of a lost node stopped; the rest go next round (by this node or another)")
		}
	}
}

func (r *Registry) reapClaimed(ctx context.Context, node string, k nodeKeys) error {
	keys := []string{k.lease, k.conns, k.reaper}
	r.log.Warn().Str("lost_node", node).Msg("registry: a node's lease lapsed: posting the close events of its connections (by: node_lost)")
	p := r.newPosting(node, ctx.Done(), func(ctx context.Context, ids []string) error {
		args := make([]any, 0, len(ids)+1)
		args = append(args, r.node)
		for _, id := range ids {
			args = append(args, id)
		}
		n, err := reapDelScript.Run(ctx, r.rdb, keys, args...).Int64()
		switch {
		case err != nil:
			return err
		case n == -1:
			return fmt.Errorf("node %s: %w", node, errLeaseBack)
		case n == -2:
			return fmt.Errorf("node %s: the claim to reap it lapsed", node)
		}
		r.m.lostConns.Add(float64(len(ids)))
		return nil
	})
	p.scan = func(ctx context.Context, cursor uint64) ([]string, uint64, error) {
		return r.rdb.HScan(ctx, k.conns, cursor, "", reapPage).Result()
	}
	if err := p.run(ctx); err != nil {
		return fmt.Errorf("after %d close events settled: %w", p.done, err)
	}
	res, err := forgetScript.Run(ctx, r.rdb, keys, r.node).Int64()
	switch {
	case err != nil:
		return err
	case res == -1:
		return fmt.Errorf("node %s: %w after %d close events were posted", node, errLeaseBack, p.done)
	case res == 0:
		return fmt.Errorf("node %s: records were left after a full scan", node)
	}
	removed, err := r.rdb.SRem(ctx, r.nodes, node).Result()
	if err != nil {
		return err
	}
	if removed == 1 {
		r.m.nodeLost.Inc()
	}
	r.log.Warn().Str("lost_node", node).Int("connections", p.done).Msg("registry: posted the close events of a lost node")
	return nil
}

// holdClaim extends the claim on a node while it is being reaped; if it
// turns out lost, the reap stops.
func (r *Registry) holdClaim(ctx context.Context, stop context.CancelFunc, key string) {
	t := time.NewTicker(r.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := extendScript.Run(ctx, r.rdb, []string{key}, r.node, r.ttl.Milliseconds()).Int64()
		if err == nil && n == 0 {
			stop()
			return
		}
	}
}
