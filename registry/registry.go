// Package registry is the record in Redis of each node's lease and of its
// live connections, so that a surviving node can post a lost node's close
// events (SPEC §3, by: node_lost; SPEC §5, the hand-over on shutdown).
//
// It touches Redis only, through the broker's client: what a close event
// is and how it reaches the app is the caller's (the sidecar hands Run the
// callback client's PostLost). Each node keeps, in Redis:
//
//	<prefix>~nodes            SET    ids of the nodes that may have records
//	<prefix>~{<node>}:lease   STRING the node's id; PX lease_ttl, refreshed every lease_ttl/3
//	<prefix>~{<node>}:conns   HASH   connection id → JSON ConnRecord
//	<prefix>~{<node>}:reaper  STRING id of the node posting this node's close events; PX lease_ttl
//
// '~' is not allowed in a channel name, so these never collide with the
// channels under the same prefix. The hash tag {<node>} puts a node's keys
// in one Redis Cluster slot, which is what lets the scripts read the lease
// and touch the records atomically; no command ever names keys of two
// slots (~nodes is only ever used on its own).
//
// The files, by concern: registry.go what is tracked (Track, Update,
// Untrack); record.go the record's one JSON format; writer.go the batched
// writer; lease.go Run, the lease and fencing; reap.go finding and claiming
// lost nodes; posting.go handing their records over and deleting them once
// their close events settled; leave.go a clean shutdown's hand-over;
// lookup.go another node's connection by id.
//
// When a lease lapses (crash, kill -9, a partition longer than lease_ttl),
// the survivors race to SET NX the dead node's reaper key; the one that
// wins checks again that the lease is still gone, hands each record to its
// PostFunc (which queues the close event and returns) and deletes the
// record once its close event was delivered or finally dropped — in a
// script that deletes nothing should the lease have come back meanwhile.
// It holds the claim for as long as close events wait, so no other node
// posts them again; should it die, the claim lapses and another takes the
// records that are left. When no record is left it forgets the node.
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
package registry

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/pubsub"
)

// Config configures a Registry. Every field says what its zero value
// means.
type Config struct {
	Prefix   string        // broker.prefix, e.g. "cablecar:"; "" = keys without a prefix
	Node     string        // this node's id (pubsub.NewNodeID()); "" = a new one
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
	// HSCAN COUNT when reading a lost node's records.
	reapPage = 1000
)

// Registry records this node's live connections in Redis and, in Run,
// posts the close events of nodes whose lease lapsed.
//
// Track, Update and Untrack only change memory: a map of the live
// connections (each one's record, needed to write it again on Update and
// should Redis lose it) and a map of the ids whose record in Redis is out
// of date. One writer flushes the latter. Being maps, both are bounded by
// the connections (those live, and those closed whose record is still to
// be deleted), never by the number of changes, however long Redis stays
// away; and changes coalesce: a connection tracked and untracked between
// two flushes is never written, several updates write the last state once.
type Registry struct {
	rdb   redis.UniversalClient
	node  string
	ttl   time.Duration
	log   zerolog.Logger
	m     metrics
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
	onLapse func(ids []string)
	lastOK  time.Time // the last successful refresh; Run's goroutine only
	fenced  bool      // fenced since the last successful refresh
	// stale counts fences whose leftovers are still to be posted.
	stale atomic.Int64
	// given up by fences and not yet posted: kept here as well as in
	// Redis, because Redis may come back empty (then no other node could
	// have posted them either). Bounded by the connections given up.
	// Guarded by mu.
	given map[string]*entry

	// Reaping: post is Run's PostFunc; reaping the nodes (this one
	// included, for its leftovers) whose close events this node is
	// posting; jobs their goroutines.
	post    PostFunc
	reapMu  sync.Mutex
	reaping map[string]bool
	jobs    sync.WaitGroup
	rounds  atomic.Int64 // reap rounds completed

	// Tests change or watch these.
	flushGap   time.Duration
	afterClaim func(node string) // between claiming a node and checking its lease again
	stats      struct {
		pipelines atomic.Int64 // round trips of the writer
		set, del  atomic.Int64 // record fields written, deleted
	}
}

// entry is a tracked connection's record. rec's strings and slices are
// never modified, only replaced (under mu), so a copy of rec taken under
// mu can be encoded outside it.
type entry struct {
	rec ConnRecord
	// inRedis: a write of the record may have reached Redis, so untracking
	// it must delete it there.
	inRedis bool
}

type nodeKeys struct{ lease, conns, reaper string }

func keysOf(prefix, node string) nodeKeys {
	base := prefix + "~{" + node + "}:"
	return nodeKeys{lease: base + "lease", conns: base + "conns", reaper: base + "reaper"}
}

type metrics struct {
	conns         prometheus.Gauge
	writesOK      prometheus.Counter
	writesErr     prometheus.Counter
	nodeLost      prometheus.Counter
	lostConns     prometheus.Counter
	leaseFailures prometheus.Counter
}

// New builds the registry of node cfg.Node and registers its metrics with
// reg. Nothing reaches Redis before Run.
func New(rdb redis.UniversalClient, cfg Config, log zerolog.Logger, reg prometheus.Registerer) *Registry {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = defaultLeaseTTL
	}
	if cfg.Node == "" {
		cfg.Node = pubsub.NewNodeID()
	}
	writes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_registry_writes_total",
		Help: "Connection records written to or deleted from Redis, by outcome (ok, error: retried later).",
	}, []string{"outcome"})
	m := metrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cablecar_registry_connections",
			Help: "Connections of this node recorded in Redis, so that any node can find them and their close events outlive the node.",
		}),
		writesOK:  writes.WithLabelValues("ok"),
		writesErr: writes.WithLabelValues("error"),
		nodeLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_node_lost_total",
			Help: "Nodes whose lease lapsed and whose connections this node posted the close events of.",
		}),
		lostConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_node_lost_connections_total",
			Help: "Connections of lost nodes whose records this node settled: their close events (by: node_lost) delivered or finally dropped, or none wanted.",
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
		given:    make(map[string]*entry),
		reaping:  make(map[string]bool),
		kick:     make(chan struct{}, 1),
		runDone:  make(chan struct{}),
		joined:   make(chan struct{}),
		flushed:  make(chan struct{}),
		leaving:  make(chan struct{}),
		flushGap: defaultFlushGap,
	}
}

// Track records a connection. The registry keeps rec's strings and
// headers (not a copy of them): the caller must not modify them.
func (r *Registry) Track(rec ConnRecord) {
	rec.Channels = slices.Clone(rec.Channels)
	rec.Claims = validClaims(rec.Claims)
	rec.Close = nil
	e := &entry{rec: rec}
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
		e.rec.State, e.rec.Channels = state, channels
		r.markLocked(id)
	}
	r.mu.Unlock()
}

// End records that a connection ended, with its close event as numbered,
// while that event is still on its way to the app: the record stays, and
// should this node die before the app took the event, a survivor posts
// that very event, same id, rather than a node_lost close the app could
// not tell from it (it would count the connection closed twice). Lookup no
// longer finds the connection open. It is the callback client's
// OnCloseNumbered hook.
func (r *Registry) End(id string, ev CloseEvent) {
	r.mu.Lock()
	if e, ok := r.live[id]; ok && !r.closed {
		e.rec.Ended, e.rec.Close = true, &ev
		r.markLocked(id)
	}
	r.mu.Unlock()
}

// Untrack forgets a connection.
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

// OnLapse sets what is called, once per outage, when this node has not
// refreshed its lease for lease_ttl: f gets the ids of every tracked
// connection, which the registry forgets without deleting their records.
// Call it before Run.
func (r *Registry) OnLapse(f func(ids []string)) { r.onLapse = f }
