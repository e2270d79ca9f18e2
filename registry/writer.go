package registry

import (
	"context"
	"errors"
	"time"
)

// writeLoop is the writer: it flushes when something changed, at most
// every flushGap, backing off while Redis fails.
func (r *Registry) writeLoop(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-r.joined:
	}
	t := time.NewTimer(0)
	<-t.C
	var (
		failing time.Time
		backoff time.Duration
		last    time.Time
	)
	for {
		if failing.IsZero() {
			select {
			case <-ctx.Done():
				return
			case <-r.kick:
			}
			// Let what changes in the meantime come along.
			if gap := r.flushGap - time.Since(last); gap > 0 {
				t.Reset(gap)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		} else {
			t.Reset(backoff)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		last = time.Now()
		err := r.flush(ctx)
		switch {
		case err == nil:
			if !failing.IsZero() {
				r.log.Info().Dur("after_ms", time.Since(failing)).Msg("registry: writing connection records to Redis again")
				failing, backoff = time.Time{}, 0
			}
		case ctx.Err() != nil:
			return
		default:
			ev := r.log.Debug()
			if failing.IsZero() {
				failing = time.Now()
				ev = r.log.Warn()
			}
			ev.Err(err).Int("pending", r.pending()).
				Msg("registry: writing connection records to Redis failed; retrying (changes wait in memory, one per connection)")
			backoff = min(max(2*backoff, minWriteBackoff), maxWriteBackoff)
		}
	}
}

func (r *Registry) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.dirty)
}

// op is one record to write (set) or delete.
type op struct {
	id  string
	rec ConnRecord // a copy taken under mu: encoded outside it
	set bool
}

// flush writes what is out of date, in pipelines, until nothing is.
func (r *Registry) flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	ops := make([]op, 0, min(r.pending(), cmdFields*pipelineCmds))
	var buf []byte
	for {
		var upto uint64
		var all bool
		ops, upto, all = r.take(ops[:0], cmdFields*pipelineCmds)
		if len(ops) > 0 {
			var err error
			if buf, err = r.send(ctx, ops, buf); err != nil {
				r.m.writesErr.Add(float64(len(ops)))
				r.putBack(ops)
				return err
			}
			r.m.writesOK.Add(float64(len(ops)))
		}
		if all {
			// Whatever changed before this take is in Redis: what an
			// earlier take failed to write was put back before it.
			r.advance(upto)
			return nil
		}
		if len(ops) == 0 {
			return nil // closed
		}
	}
}

// advance says every change up to seq is in Redis.
func (r *Registry) advance(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if seq > r.written {
		r.written = seq
		close(r.flushed)
		r.flushed = make(chan struct{})
	}
}

// Written returns once every Track, Update and Untrack made before the
// call is in Redis, or when ctx ends (with its error). A caller that must
// not let the app hear of a connection whose close event could be lost
// with this node waits for it, bounded, between Track and the open event:
// a batch, not a round trip of its own, a few milliseconds at most while
// Redis is well. It returns an error after Leave.
func (r *Registry) Written(ctx context.Context) error {
	r.mu.Lock()
	target := r.seq
	for r.written < target && !r.closed {
		ch := r.flushed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		r.mu.Lock()
	}
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return errors.New("registry: this node left")
	}
	return nil
}

// take moves up to max out-of-date ids into ops, and says up to which
// change and whether it took them all. Encoding is left to the caller,
// outside the lock: what an op refers to is never modified.
func (r *Registry) take(ops []op, max int) ([]op, uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ops, 0, false
	}
	for id := range r.dirty {
		if len(ops) == max {
			break
		}
		delete(r.dirty, id)
		if e, ok := r.live[id]; ok {
			e.inRedis = true
			ops = append(ops, op{id: id, rec: e.rec, set: true})
		} else {
			ops = append(ops, op{id: id})
		}
	}
	if len(r.dirty) == 0 && r.peak > shrinkAbove {
		// Go maps do not shrink: let a large backlog's go.
		r.dirty, r.peak = make(map[string]struct{}), 0
	}
	return ops, r.seq, len(r.dirty) == 0
}

// putBack marks again what a failed flush took. A record that changed or
// went meanwhile is marked already; the map makes that harmless.
func (r *Registry) putBack(ops []op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	for i := range ops {
		r.dirty[ops[i].id] = struct{}{}
	}
	r.peak = max(r.peak, len(r.dirty))
}

// send writes ops in one pipeline: variadic HSETs, then HDELs, of at most
// cmdFields fields each. buf holds the JSON and is returned for reuse.
func (r *Registry) send(ctx context.Context, ops []op, buf []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	// Every record is encoded first, into one buffer, and only then
	// sliced: the buffer may move while it grows.
	enc := newRecordEncoder(buf[:0])
	type span struct{ start, end int }
	spans := make([]span, len(ops))
	for i := range ops {
		if ops[i].set {
			spans[i].start, spans[i].end = enc.add(&ops[i].rec)
		}
	}
	all := enc.bytes()
	pipe := r.rdb.Pipeline()
	var sets []any
	var dels []string
	nset, ndel := 0, 0
	for i := range ops {
		o := &ops[i]
		if !o.set {
			if dels == nil {
				dels = make([]string, 0, min(cmdFields, len(ops)))
			}
			dels = append(dels, o.id)
			if len(dels) == cmdFields {
				pipe.HDel(ctx, r.keys.conns, dels...)
				ndel += len(dels)
				dels = make([]string, 0, cmdFields)
			}
			continue
		}
		if sets == nil {
			sets = make([]any, 0, 2*min(cmdFields, len(ops)))
		}
		s := spans[i]
		sets = append(sets, o.id, all[s.start:s.end:s.end])
		if len(sets) == 2*cmdFields {
			pipe.HSet(ctx, r.keys.conns, sets...)
			nset += len(sets) / 2
			sets = make([]any, 0, 2*cmdFields)
		}
	}
	if len(sets) > 0 {
		pipe.HSet(ctx, r.keys.conns, sets...)
		nset += len(sets) / 2
	}
	if len(dels) > 0 {
		pipe.HDel(ctx, r.keys.conns, dels...)
		ndel += len(dels)
	}
	r.stats.pipelines.Add(1)
	if _, err := pipe.Exec(ctx); err != nil {
		return all, err
	}
	r.stats.set.Add(int64(nset))
	r.stats.del.Add(int64(ndel))
	return all, nil
}
