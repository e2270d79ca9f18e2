package pubsub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/jsontext"
)

// The registry lets the close events of a node's connections outlive the
// node (SPEC §3, by: node_lost). Each node keeps, in Redis:
//
//	<prefix>~nodes            SET    ids of the nodes that may have records
//	<prefix>~{<node>}:lease   STRING the node's id; PX lease_ttl, refreshed every lease_ttl/3
//	<prefix>~{<node>}:conns   HASH   connection id → JSON ConnRecord
//	<prefix>~{<node>}:reaper  STRING id of the node posting this node's close events; PX lease_ttl
//
// '~' is not allowed in a channel name, so these never collide with the
// channels under the same prefix. The hash tag {<node>} puts a node's keys
// in one Redis Cluster slot, which is what lets the scripts below read the
// lease and touch the records atomically; no command ever names keys of two
// slots (~nodes is only ever used on its own).
//
// When a lease lapses (crash, kill -9, a partition longer than lease_ttl),
// the survivors race to SET NX the dead node's reaper key; the one that
// wins checks again that the lease is still gone, reads the records in
// pages (HSCAN), hands each page to reap (which posts the close events) and
// deletes it — in a script that deletes nothing should the lease have come
// back meanwhile. When no record is left it forgets the node.
//
// Cost in Redis, per connection: one hash field (the 26-byte id) and its
// JSON (id, path, headers, state, channels, claims: typically 400–600
// bytes, most of it the forwarded Cookie), plus about 120 bytes of hash
// table overhead: ~600 bytes for a browser connection with a 200-byte
// cookie, 60 MB for a node of 100k (TestRegistryMemoryPerConnection
// measures it). Writes are batched: one pipeline of variadic HSET/HDEL as
// soon as something changed but at most every 5 ms, so a node makes at
// most 200 round trips a second however many connections come and go, and
// a connection's record is in Redis a few milliseconds after Track.

// RegistryConfig configures a Registry. Every field says what its zero
// value means.
type RegistryConfig struct {
	Prefix   string        // broker.prefix, e.g. "cablecar:"; "" = keys without a prefix
	Node     string        // this node's id (NewNodeID()); "" = a new one
	LeaseTTL time.Duration // broker.lease_ttl; 0 → 15 s
}

const (
	defaultLeaseTTL = 15 * time.Second
	// The writer flushes as soon as something changed, but no sooner than
	// flushGap after its last flush: what changes meanwhile goes in the
	// next pipeline. A change so reaches Redis within a few milliseconds
	// (a node killed right after accepting a connection still leaves its
	// record), and a node makes at most 200 round trips a second however
	// many connections come and go.
	defaultFlushGap = 5 * time.Millisecond
	// After a failed flush the writer waits from minWriteBackoff,
	// doubling, up to maxWriteBackoff.
	minWriteBackoff = 50 * time.Millisecond
	maxWriteBackoff = 2 * time.Second
	// A dirty map that grew past this is dropped once empty: Go maps do
	// not shrink.
	shrinkAbove = 4096
	// One HSET or HDEL names at most cmdFields fields, so that no single
	// command keeps Redis busy long; one pipeline carries at most
	// pipelineCmds of them (≈ 4 MB of records).
	cmdFields    = 1000
	pipelineCmds = 8
	// A flush that has not completed in this long failed.
	writeTimeout = 5 * time.Second
	// HSCAN COUNT when reading a lost node's records: reap gets pages of
	// about this many.
	reapPage = 1000
)

// Registry is the Redis Tracker: it records this node's live connections
// and, in Run, posts the close events of nodes whose lease lapsed.
//
// Track, Update and Untrack only change memory: a map of the live
// connections (a compact copy of each record, needed to rewrite its JSON
// on Update and to write it all again should Redis lose it) and a map of
// the ids whose record in Redis is out of date. One writer flushes the
// latter. Being maps, both are bounded by the connections (those live, and
// those closed whose record is still to be deleted), never by the number of
// changes, however long Redis stays away; and changes coalesce: a
// connection tracked and untracked between two flushes is never written,
// several updates write the last state once.
type Registry struct {
	rdb   redis.UniversalClient
	node  string
	ttl   time.Duration
	log   zerolog.Logger
	m     registryMetrics
	nodes string // <prefix>~nodes
	keys  nodeKeys
	pfx   string

	mu     sync.Mutex
	live   map[string]*entry
	dirty  map[string]struct{} // ids whose record in Redis is out of date
	peak   int                 // the largest dirty has been since it was made
	closed bool                // Leave was called
	// seq counts changes; every change up to written is in Redis (or
	// needs not be). flushed is closed, and replaced, when written moves.
	seq, written uint64
	flushed      chan struct{}

	// flushMu makes the writer one: flushes (the writer's, Leave's, a
	// test's) never overlap, so an HDEL cannot overtake the HSET of the same
	// id.
	flushMu sync.Mutex
	kick    chan struct{} // something changed since the writer last took the changes

	started   atomic.Bool
	joined    chan struct{} // closed once the node is listed, with its lease
	joinOnce  sync.Once
	rewrite   bool // every record is to be written again once listed; Run's goroutine only
	runDone   chan struct{}
	leaving   chan struct{}
	leaveOnce sync.Once

	// healthy is when the lease was last (re)gained after a failure, in
	// unix nanoseconds; 0 while refreshing it fails.
	healthy atomic.Int64

	// Fencing: a node that has not refreshed its lease for lease_ttl may
	// have been taken for lost, and its connections' node_lost closes
	// posted. It then gives its connections up (onLapse closes them
	// without close events of their own) rather than keep serving
	// connections the app was told are gone. Their records stay in Redis
	// for a reaper; should none have come (one node, Redis away), this
	// node posts them itself once Redis is back.
	onLapse    func(ids []string)
	lastOK     time.Time   // the last successful refresh; Run's goroutine only
	fenced     bool        // fenced since the last successful refresh
	reapStale  atomic.Bool // after a fence: post this node's own leftover records
	reapingOwn atomic.Bool
	// given up by fences and not yet posted: kept here as well as in Redis,
	// because Redis may come back empty (then no other node could have
	// posted them either). Bounded by the connections given up. Guarded
	// by mu.
	fencedRecs map[string]ConnRecord

	// Tests change or watch these.
	flushGap   time.Duration
	afterClaim func(node string) // between claiming a node and checking its lease again
	stats      struct {
		pipelines atomic.Int64 // round trips of the writer
		set, del  atomic.Int64 // record fields written, deleted
	}
}

var _ Tracker = (*Registry)(nil)

// entry is the compact copy of a tracked record.
type entry struct {
	head     []byte // `{"id":…,"path":…,"headers":…,"claims":…` — fixed for the connection's life
	state    string
	channels []string
	// inRedis: a write of the record may have reached Redis, so untracking
	// it must delete it there.
	inRedis bool
	// close is the close event its connection was given and that
	// shutdown could not deliver (HandOver); nil otherwise.
	close *CloseEvent
}

type nodeKeys struct{ lease, conns, reaper string }

func keysOf(prefix, node string) nodeKeys {
	base := prefix + "~{" + node + "}:"
	return nodeKeys{lease: base + "lease", conns: base + "conns", reaper: base + "reaper"}
}

type registryMetrics struct {
	conns         prometheus.Gauge
	writesOK      prometheus.Counter
	writesErr     prometheus.Counter
	nodeLost      prometheus.Counter
	lostConns     prometheus.Counter
	leaseFailures prometheus.Counter
}

// NewRegistry builds the registry of node cfg.Node and registers its
// metrics with reg. Nothing reaches Redis before Run.
func NewRegistry(rdb redis.UniversalClient, cfg RegistryConfig, log zerolog.Logger, reg prometheus.Registerer) *Registry {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = defaultLeaseTTL
	}
	if cfg.Node == "" {
		cfg.Node = NewNodeID()
	}
	writes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_registry_writes_total",
		Help: "Connection records written to or deleted from Redis, by outcome (ok, error: retried later).",
	}, []string{"outcome"})
	m := registryMetrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cablecar_registry_connections",
			Help: "Connections of this node recorded in Redis, so that their close events outlive the node.",
		}),
		writesOK:  writes.WithLabelValues("ok"),
		writesErr: writes.WithLabelValues("error"),
		nodeLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_node_lost_total",
			Help: "Nodes whose lease lapsed and whose connections this node posted the close events of.",
		}),
		lostConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_node_lost_connections_total",
			Help: "Connections of lost nodes whose close events (by: node_lost) this node handed to the app.",
		}),
		leaseFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_lease_refresh_failures_total",
			Help: "Failed refreshes of this node's lease in Redis; lease_ttl of them in a row and other nodes take this node for lost.",
		}),
	}
	reg.MustRegister(writes, m.conns, m.nodeLost, m.lostConns, m.leaseFailures)
	return &Registry{
		rdb:      rdb,
		node:     cfg.Node,
		ttl:      cfg.LeaseTTL,
		log:      log.With().Str("node", cfg.Node).Logger(),
		m:        m,
		pfx:      cfg.Prefix,
		nodes:    cfg.Prefix + "~nodes",
		keys:     keysOf(cfg.Prefix, cfg.Node),
		live:     make(map[string]*entry),
		dirty:    make(map[string]struct{}),
		kick:     make(chan struct{}, 1),
		runDone:  make(chan struct{}),
		joined:   make(chan struct{}),
		flushed:  make(chan struct{}),
		leaving:  make(chan struct{}),
		flushGap: defaultFlushGap,
	}
}

// Node returns this node's id.
func (r *Registry) Node() string { return r.node }

// Track records a connection. The registry keeps rec's strings (not a copy
// of them) and encodes the rest at once.
func (r *Registry) Track(rec ConnRecord) {
	e := &entry{head: encodeHead(rec), state: rec.State, channels: slices.Clone(rec.Channels)}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	if old, ok := r.live[rec.ID]; ok {
		e.inRedis = old.inRedis
	} else {
		r.m.conns.Inc()
	}
	r.live[rec.ID] = e
	r.markLocked(rec.ID)
	r.mu.Unlock()
}

// Update records a connection's new state and channels (all of them).
func (r *Registry) Update(id, state string, channels []string) {
	channels = slices.Clone(channels)
	r.mu.Lock()
	if e, ok := r.live[id]; ok && !r.closed {
		e.state, e.channels = state, channels
		r.markLocked(id)
	}
	r.mu.Unlock()
}

// Untrack forgets a connection.
// OnLapse sets what is called, once per outage, when this node has not
// refreshed its lease for lease_ttl: f gets the ids of every tracked
// connection, which the registry forgets without deleting their records.
// Call it before Run.
func (r *Registry) OnLapse(f func(ids []string)) { r.onLapse = f }

// fence gives up every tracked connection: they leave memory, their
// records stay in Redis.
func (r *Registry) fence() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.live))
	if r.fencedRecs == nil {
		r.fencedRecs = map[string]ConnRecord{}
	}
	for id, e := range r.live {
		ids = append(ids, id)
		delete(r.dirty, id)
		var rec ConnRecord
		if err := json.Unmarshal(appendRecord(nil, &op{head: e.head, state: e.state, channels: e.channels}), &rec); err == nil {
			r.fencedRecs[id] = rec
		}
	}
	r.m.conns.Sub(float64(len(r.live)))
	clear(r.live)
	return ids
}

func (r *Registry) Untrack(id string) {
	r.mu.Lock()
	e, ok := r.live[id]
	if !ok || r.closed {
		r.mu.Unlock()
		return
	}
	delete(r.live, id)
	r.m.conns.Dec()
	if e.inRedis {
		r.markLocked(id)
	} else {
		// Never written: nothing to delete either.
		delete(r.dirty, id)
	}
	r.mu.Unlock()
}

func (r *Registry) markLocked(id string) {
	r.seq++
	r.dirty[id] = struct{}{}
	if n := len(r.dirty); n > r.peak {
		r.peak = n
	}
	if len(r.dirty) == 1 {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// Run keeps this node's lease and records in Redis and, every lease_ttl/3
// or so, posts the close events of nodes whose lease lapsed through reap.
// It returns when ctx ends or Leave is called; Redis being away is logged
// and retried, never fatal. It is called once. With reap nil, this node
// keeps its own records but reaps no other.
//
// Run's ctx is not the shutdown signal: cancelling it abandons the node's
// records for the survivors to reap (node_lost) once the lease lapses. A
// clean shutdown delivers its own close events, then calls Leave, which
// stops Run.
//
// reap posts the close events of recs, connections of the lost node. It
// is called with pages of about 1000 records, one page at a time, possibly
// several times for one node; the records of a page are deleted once it
// returns nil. On an error they stay, and the node is tried again a round
// later (by this node or another), so reap must give up on ctx and may be
// handed a record again whose close event it delivered before: the event
// id of a lost close event is the same whichever node posts it, for the
// app to drop.
func (r *Registry) Run(ctx context.Context, reap func(ctx context.Context, node string, recs []ConnRecord) error) {
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
	if reap != nil {
		wg.Go(func() { r.reapLoop(ctx, reap) })
	}

	failing := time.Time{}
	t := time.NewTicker(r.ttl / 3)
	defer t.Stop()
	for {
		err := r.refresh(ctx)
		switch {
		case err == nil:
			r.lastOK, r.fenced = time.Now(), false
			if !failing.IsZero() {
				r.log.Info().Dur("after", time.Since(failing)).Msg("registry: lease in Redis refreshed again")
				failing = time.Time{}
			}
			if reap != nil && r.reapStale.Load() && r.reapingOwn.CompareAndSwap(false, true) {
				// Posting may take long; the lease must not wait for it.
				wg.Go(func() {
					defer r.reapingOwn.Store(false)
					if err := r.reapOwn(ctx, reap); err == nil {
						r.reapStale.Store(false)
					} else if ctx.Err() == nil {
						r.log.Warn().Err(err).Msg("registry: posting this node's leftover close events failed; retrying at the next refresh")
					}
				})
			}
		case ctx.Err() != nil:
		default:
			if !r.fenced && !r.lastOK.IsZero() && time.Since(r.lastOK) >= r.ttl {
				r.fenced = true
				r.reapStale.Store(true)
				ids := r.fence()
				r.log.Error().Int("connections", len(ids)).Dur("lease_ttl", r.ttl).
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
			ev.Err(err).Dur("lease_ttl", r.ttl).
				Msg("registry: refreshing this node's lease in Redis failed; retrying (other nodes take this node for lost once lease_ttl passes without one)")
		}
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
		}
	}
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

// reapOwn posts the close events of the connections this node gave up in
// a fence: those still recorded under this node in Redis that belong to no
// tracked connection (no other node reaped them: with one node there is
// no other), and those kept in memory should Redis have come back empty.
// A close event another node posted already is posted again with the same
// id, for the app to drop. Then the records are deleted.
func (r *Registry) reapOwn(ctx context.Context, reap func(context.Context, string, []ConnRecord) error) error {
	r.mu.Lock()
	kept := make([]ConnRecord, 0, len(r.fencedRecs))
	for _, rec := range r.fencedRecs {
		kept = append(kept, rec)
	}
	r.mu.Unlock()
	for len(kept) > 0 {
		page := kept[:min(len(kept), reapPage)]
		kept = kept[len(page):]
		if err := reap(ctx, r.node, page); err != nil {
			return err
		}
		ids := make([]string, len(page))
		r.mu.Lock()
		for i, rec := range page {
			ids[i] = rec.ID
			delete(r.fencedRecs, rec.ID)
		}
		r.mu.Unlock()
		if err := r.rdb.HDel(ctx, r.keys.conns, ids...).Err(); err != nil {
			return err
		}
	}
	var cursor uint64
	for {
		kv, next, err := r.rdb.HScan(ctx, r.keys.conns, cursor, "", reapPage).Result()
		if err != nil {
			return err
		}
		recs, _ := decodeRecords(kv, r.log)
		r.mu.Lock()
		var stale []ConnRecord
		var staleIDs []string
		for _, rec := range recs {
			if _, live := r.live[rec.ID]; !live {
				stale = append(stale, rec)
				staleIDs = append(staleIDs, rec.ID)
			}
		}
		r.mu.Unlock()
		if len(stale) > 0 {
			r.log.Warn().Int("connections", len(stale)).Msg("registry: posting the close events of this node's connections given up while Redis was away")
			if err := reap(ctx, r.node, stale); err != nil {
				return err
			}
			if err := r.rdb.HDel(ctx, r.keys.conns, staleIDs...).Err(); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
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
				r.log.Info().Dur("after", time.Since(failing)).Msg("registry: writing connection records to Redis again")
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
	id       string
	head     []byte
	state    string
	channels []string
	close    *CloseEvent
	set      bool
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
			ops = append(ops, op{id: id, head: e.head, state: e.state, channels: e.channels, set: true})
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
	// Records are encoded into one buffer, sized first so that the
	// slices handed to the pipeline stay valid.
	size := 0
	for i := range ops {
		if ops[i].set {
			size += len(ops[i].head) + len(ops[i].state) + 32
			if c := ops[i].close; c != nil {
				size += 80 + 2*len(c.Reason) + len(c.By)
			}
			for _, ch := range ops[i].channels {
				size += len(ch) + 3
			}
		}
	}
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	buf = buf[:0]
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
		start := len(buf)
		buf = appendRecord(buf, o)
		if sets == nil {
			sets = make([]any, 0, 2*min(cmdFields, len(ops)))
		}
		sets = append(sets, o.id, buf[start:len(buf):len(buf)])
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
		return buf, err
	}
	r.stats.set.Add(int64(nset))
	r.stats.del.Add(int64(ndel))
	return buf, nil
}

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
			e.close = &ev
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
		left += b2i(ops[i].set)
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
	ops := make([]op, 0, len(r.live)+len(r.fencedRecs)+len(r.dirty))
	for id, e := range r.live {
		ops = append(ops, op{id: id, head: e.head, state: e.state, channels: e.channels, close: e.close, set: true})
	}
	for id, rec := range r.fencedRecs {
		if _, ok := r.live[id]; !ok {
			ops = append(ops, op{id: id, head: encodeHead(rec), state: rec.State, channels: rec.Channels, close: rec.Close, set: true})
		}
	}
	for id := range r.dirty {
		_, live := r.live[id]
		_, fenced := r.fencedRecs[id]
		if !live && !fenced {
			ops = append(ops, op{id: id})
		}
	}
	clear(r.live)
	clear(r.dirty)
	clear(r.fencedRecs)
	r.m.conns.Set(0)
	return ops
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// reapLoop looks for lost nodes every lease_ttl/3, jittered so that the
// survivors do not all look at once.
func (r *Registry) reapLoop(ctx context.Context, reap func(context.Context, string, []ConnRecord) error) {
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
			if err := r.reapRound(ctx, reap); err != nil && ctx.Err() == nil {
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

// reapRound reaps every node whose lease lapsed and that no other node is
// reaping.
func (r *Registry) reapRound(ctx context.Context, reap func(context.Context, string, []ConnRecord) error) error {
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
		if err := r.reapNode(ctx, n, reap); err != nil && ctx.Err() == nil && !errors.Is(err, errLeaseBackQuiet) {
			r.log.Warn().Err(err).Str("lost_node", n).Msg("registry: posting the close events of a lost node failed; trying again next round")
		}
	}
	return nil
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

// reapNode claims node and posts the close events of its connections.
func (r *Registry) reapNode(ctx context.Context, node string, reap func(context.Context, string, []ConnRecord) error) (err error) {
	if node == r.node {
		return nil
	}
	k := keysOf(r.pfx, node)
	won, err := r.rdb.SetNX(ctx, k.reaper, r.node, r.ttl).Result()
	if err != nil || !won {
		return err // another survivor has it
	}
	if r.afterClaim != nil {
		r.afterClaim(node)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		if err != nil {
			// Let another round (or node) try at once rather than after
			// the claim lapses.
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), r.ttl/3)
			_ = releaseScript.Run(rctx, r.rdb, []string{k.reaper}, r.node).Err()
			rcancel()
		}
	}()
	// The claim lapses like a lease should this node die while reaping.
	wg.Go(func() { r.holdClaim(ctx, cancel, k.reaper) })

	back, err := r.rdb.Exists(ctx, k.lease).Result()
	if err != nil {
		return err
	}
	if back == 1 {
		r.log.Info().Str("lost_node", node).Msg("registry: a node's lease lapsed and came back: not lost")
		return errLeaseBackQuiet
	}
	keys := []string{k.lease, k.conns, k.reaper}
	r.log.Warn().Str("lost_node", node).Msg("registry: a node's lease lapsed: posting the close events of its connections (by: node_lost)")
	total := 0
	var cursor uint64
	for {
		kv, next, err := r.rdb.HScan(ctx, k.conns, cursor, "", reapPage).Result()
		if err != nil {
			return err
		}
		recs, ids := decodeRecords(kv, r.log)
		if len(ids) > 0 {
			if len(recs) > 0 {
				if err := reap(ctx, node, recs); err != nil {
					return fmt.Errorf("reap: %w", err)
				}
			}
			// In chunks: HSCAN may return a small hash whole, however
			// large hash-max-listpack-entries was set, and Lua's unpack
			// takes a few thousand values at most.
			for chunk := range slices.Chunk(ids, cmdFields) {
				args := make([]any, 0, len(chunk)+1)
				args = append(args, r.node)
				for _, id := range chunk {
					args = append(args, id)
				}
				n, err := reapDelScript.Run(ctx, r.rdb, keys, args...).Int64()
				switch {
				case err != nil:
					return err
				case n == -1:
					return fmt.Errorf("node %s: %w after %d close events were posted", node, errLeaseBack, total+len(recs))
				case n == -2:
					return fmt.Errorf("node %s: the claim to reap it lapsed", node)
				}
			}
			total += len(recs)
			r.m.lostConns.Add(float64(len(recs)))
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	res, err := forgetScript.Run(ctx, r.rdb, keys, r.node).Int64()
	switch {
	case err != nil:
		return err
	case res == -1:
		return fmt.Errorf("node %s: %w after %d close events were posted", node, errLeaseBack, total)
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
	r.log.Warn().Str("lost_node", node).Int("connections", total).Msg("registry: posted the close events of a lost node")
	return nil
}

// errLeaseBackQuiet ends a reap that found the lease back before doing
// anything: the claim is released, and there is nothing to log.
var errLeaseBackQuiet = fmt.Errorf("quiet: %w", errLeaseBack)

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

// decodeRecords reads HSCAN's field, value pairs. ids has every field,
// also those whose value could not be read (logged, and deleted with the
// rest: no one could post their close event).
func decodeRecords(kv []string, log zerolog.Logger) (recs []ConnRecord, ids []string) {
	recs = make([]ConnRecord, 0, len(kv)/2)
	ids = make([]string, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		ids = append(ids, kv[i])
		var rec ConnRecord
		if err := json.Unmarshal([]byte(kv[i+1]), &rec); err != nil || rec.Path == "" {
			log.Error().Str("conn_id", kv[i]).AnErr("error", err).Msg("registry: unreadable connection record of a lost node: its close event cannot be posted")
			continue
		}
		if rec.ID == "" {
			rec.ID = kv[i]
		}
		recs = append(recs, rec)
	}
	return recs, ids
}

// The JSON of a record is written by hand: the fixed part once, at Track;
// state and channels at each write.

// encodeHead writes `{"id":…,"path":…,"headers":[…],"claims":…`, left
// open for state and channels.
func encodeHead(rec ConnRecord) []byte {
	// `{"id":"","path":"","headers":[],"claims":` is 41 bytes; a header
	// adds 8 besides its name and value. Escapes may need more.
	n := 41 + len(rec.ID) + len(rec.Path) + len(rec.Claims)
	for _, h := range rec.Headers {
		n += len(h[0]) + len(h[1]) + 8
	}
	b := make([]byte, 0, n)
	b = append(b, `{"id":`...)
	b = jsontext.AppendString(b, rec.ID)
	b = append(b, `,"path":`...)
	b = jsontext.AppendString(b, rec.Path)
	if len(rec.Headers) > 0 {
		b = append(b, `,"headers":[`...)
		for i, h := range rec.Headers {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '[')
			b = jsontext.AppendString(b, h[0])
			b = append(b, ',')
			b = jsontext.AppendString(b, h[1])
			b = append(b, ']')
		}
		b = append(b, ']')
	}
	if len(rec.Claims) > 0 && json.Valid(rec.Claims) {
		b = append(b, `,"claims":`...)
		b = appendCompact(b, rec.Claims)
	}
	if cap(b) > n {
		// It grew: do not keep the slack for the connection's life.
		return slices.Clone(b)
	}
	return b
}

func appendCompact(dst, raw []byte) []byte {
	buf := bytes.NewBuffer(dst)
	if err := json.Compact(buf, raw); err != nil {
		return append(dst, raw...)
	}
	return buf.Bytes()
}

// appendRecord closes a record's head with its state and channels.
func appendRecord(dst []byte, o *op) []byte {
	dst = append(dst, o.head...)
	if o.state != "" {
		dst = append(dst, `,"state":`...)
		dst = jsontext.AppendString(dst, o.state)
	}
	if len(o.channels) > 0 {
		dst = append(dst, `,"channels":[`...)
		for i, ch := range o.channels {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsontext.AppendString(dst, ch)
		}
		dst = append(dst, ']')
	}
	if c := o.close; c != nil {
		dst = append(dst, `,"close":{"n":`...)
		dst = strconv.AppendUint(dst, c.N, 10)
		dst = append(dst, `,"code":`...)
		dst = strconv.AppendInt(dst, int64(c.Code), 10)
		if c.Reason != "" {
			dst = append(dst, `,"reason":`...)
			dst = jsontext.AppendString(dst, c.Reason)
		}
		dst = append(dst, `,"by":`...)
		dst = jsontext.AppendString(dst, c.By)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}
