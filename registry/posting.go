package registry

import (
	"context"
	"slices"
	"sync"
	"time"
)

// A posting hands a node's records to Run's PostFunc and deletes each
// once its close event settled. It never waits for the app: it waits
// only for settlements, which the PostFunc reports from its own
// goroutines. What it handed over and what settled it remembers by id,
// so that a record read again (a later pass) is never handed over twice.
//
// A record's close event is posted by one node at a time: a lost node's
// by the holder of its claim, held for as long as the posting lasts; this
// node's own leftovers by this node alone.
type posting struct {
	r    *Registry
	node string
	stop <-chan struct{}
	// scan reads a page of the node's records, as HSCAN does.
	scan func(ctx context.Context, cursor uint64) (kv []string, next uint64, err error)
	// del deletes the records of settled close events.
	del func(ctx context.Context, ids []string) error
	// skip, when set, leaves a record alone: this node's own connections
	// still live.
	skip func(id string) bool
	// kept, when set, is offered at the start of each pass, before what
	// Redis holds: records only this node may still have.
	kept func() []ConnRecord

	mu   sync.Mutex
	out  map[string]struct{} // handed over, not settled
	gone map[string]struct{} // settled, record not yet deleted
	wake chan struct{}       // something settled
	done int                 // records deleted; the posting's goroutine only
}

func (r *Registry) newPosting(node string, stop <-chan struct{}, del func(context.Context, []string) error) *posting {
	return &posting{r: r, node: node, stop: stop, del: del,
		out: map[string]struct{}{}, gone: map[string]struct{}{}, wake: make(chan struct{}, 1)}
}

// settle is what the PostFunc calls once rec's close event settled.
func (p *posting) settle(id string) func() {
	return func() {
		p.mu.Lock()
		delete(p.out, id)
		p.gone[id] = struct{}{}
		p.mu.Unlock()
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// offer hands recs over, but those handed over already; false when the
// PostFunc had no room for one: the rest wait for a later pass.
func (p *posting) offer(recs []ConnRecord) bool {
	for _, rec := range recs {
		p.mu.Lock()
		_, out := p.out[rec.ID]
		_, gone := p.gone[rec.ID]
		busy := out || gone || (p.skip != nil && p.skip(rec.ID))
		if !busy {
			// Before the call: settled may run before it returns.
			p.out[rec.ID] = struct{}{}
		}
		p.mu.Unlock()
		if busy {
			continue
		}
		if !p.r.post(p.node, rec, p.stop, p.settle(rec.ID)) {
			p.mu.Lock()
			delete(p.out, rec.ID)
			p.mu.Unlock()
			return false
		}
	}
	return true
}

// run offers every record, and returns once each was settled and deleted,
// or with an error (ctx ended, Redis failed, the claim was lost): what is
// left then stays in Redis for the next reaper.
//
// A pass reads the records page by page and offers them. One that ran out
// of room is made again once something settled, or after a round; one
// that offered everything leaves only settlements to wait for.
func (p *posting) run(ctx context.Context) error {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		complete, err := p.pass(ctx)
		if err != nil {
			return err
		}
		if !complete {
			retry.Reset(p.r.ttl / 3)
		}
		progressed := false
		for {
			if err := p.flush(ctx); err != nil {
				return err
			}
			p.mu.Lock()
			idle := len(p.out) == 0 && len(p.gone) == 0
			p.mu.Unlock()
			if idle && complete {
				return nil
			}
			if !complete && progressed {
				break // room again, maybe: another pass
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-p.wake:
				progressed = true
			case <-retry.C:
				if !complete {
					progressed = true
				}
			}
		}
	}
}

// pass reads every record once and offers it, deleting what settled
// between pages; false when the PostFunc ran out of room.
func (p *posting) pass(ctx context.Context) (bool, error) {
	if p.kept != nil && !p.offer(p.kept()) {
		return false, nil
	}
	var cursor uint64
	for {
		if err := p.flush(ctx); err != nil {
			return false, err
		}
		kv, next, err := p.scan(ctx, cursor)
		if err != nil {
			return false, err
		}
		recs := p.decode(kv)
		if !p.offer(recs) {
			return false, nil
		}
		if next == 0 {
			return true, nil
		}
		cursor = next
	}
}

// decode reads HSCAN's field, value pairs. A record that cannot be read
// is logged and deleted with the settled: no one could post its close
// event.
func (p *posting) decode(kv []string) []ConnRecord {
	recs := make([]ConnRecord, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		rec, err := decodeRecord(kv[i], []byte(kv[i+1]))
		if err != nil {
			p.r.log.Error().Err(err).Str("lost_node", p.node).Msg("registry: unreadable connection record: its close event cannot be posted")
			p.mu.Lock()
			p.gone[kv[i]] = struct{}{}
			p.mu.Unlock()
			continue
		}
		recs = append(recs, rec)
	}
	return recs
}

// flush deletes the records of the close events that settled.
func (p *posting) flush(ctx context.Context) error {
	p.mu.Lock()
	if len(p.gone) == 0 {
		p.mu.Unlock()
		return nil
	}
	ids := make([]string, 0, len(p.gone))
	for id := range p.gone {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	// In chunks: Lua's unpack takes a few thousand values at most.
	for chunk := range slices.Chunk(ids, cmdFields) {
		if err := p.del(ctx, chunk); err != nil {
			return err
		}
		p.mu.Lock()
		for _, id := range chunk {
			delete(p.gone, id)
		}
		p.mu.Unlock()
		p.done += len(chunk)
	}
	return nil
}

// startPostingOwn posts, in a goroutine, the close events of the
// connections this node gave up in fences (see Run): those kept in memory,
// should Redis have come back empty, and those still recorded under this
// node in Redis that belong to no tracked connection (no other node reaped
// them: with one node there is no other). A close event another node
// posted already is posted again with the same id, for the app to drop.
// Each record goes once its close event settled.
func (r *Registry) startPostingOwn(ctx context.Context) {
	if !r.startReaping(r.node) {
		return
	}
	fences := r.stale.Load()
	r.jobs.Go(func() {
		defer r.stopReaping(r.node)
		p := r.newPosting(r.node, ctx.Done(), func(ctx context.Context, ids []string) error {
			r.mu.Lock()
			for _, id := range ids {
				delete(r.given, id)
			}
			r.mu.Unlock()
			return r.rdb.HDel(ctx, r.keys.conns, ids...).Err()
		})
		p.scan = func(ctx context.Context, cursor uint64) ([]string, uint64, error) {
			return r.rdb.HScan(ctx, r.keys.conns, cursor, "", reapPage).Result()
		}
		p.kept = func() []ConnRecord {
			r.mu.Lock()
			defer r.mu.Unlock()
			recs := make([]ConnRecord, 0, len(r.given))
			for _, e := range r.given {
				recs = append(recs, e.rec)
			}
			return recs
		}
		p.skip = func(id string) bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			_, live := r.live[id]
			_, dirty := r.dirty[id] // untracked, its deletion on the way
			return live || dirty
		}
		err := p.run(ctx)
		if p.done > 0 {
			r.log.Warn().Int("connections", p.done).Msg("registry: posted the close events of this node's connections given up while Redis was away")
		}
		switch {
		case err == nil:
			r.stale.CompareAndSwap(fences, 0)
		case ctx.Err() == nil:
			r.log.Warn().Err(err).Msg("registry: posting this node's leftover close events failed; retrying at the next refresh")
		}
	})
}
