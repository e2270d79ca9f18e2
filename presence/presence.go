// Package presence says who is in a channel (SPEC §11): a presence id is
// online in a channel while at least one connection holds it, on any node;
// when its last connection drops it leaves leave_delay later (a blip or a
// reconnect race is not a leave); an explicit leave by its last holder
// leaves at once; a lost node's presences leave when its lease lapses.
//
// Tracker is one node's side: which of its connections hold which
// (channel, id), the leave_delay timers, and one writer that hands the
// node's holdings to a Store and announces the joins and leaves the Store
// decided. The Store is the cluster's side: Memory for one node, Redis for
// many (redis.go, per-node records beside the registry's leases; reap.go
// takes a lost node's out). Who hears of a join or leave is the caller's
// (Notify: the hub's subscribers) and the Poster's (the app's
// presence.callback_path, notify.go).
//
// It knows connections by id only: no socket, no broker, no hub.
package presence

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Event types.
const (
	Join  = "join"
	Leave = "leave"
)

// Event is a join or a leave of the whole cluster, decided once.
type Event struct {
	// ID is unique and stays the same across retries and nodes (the
	// callback's "id").
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Channel string          `json:"channel"`
	Who     string          `json:"presence_id"`
	Info    json.RawMessage `json:"info,omitempty"`
	At      int64           `json:"at"` // unix ms
	// Taken: an event a lost node decided (and announced) whose callback
	// this node took over; only the app is still to hear of it.
	Taken bool `json:"-"`
}

// Member is one presence id of a channel.
type Member struct {
	ID          string          `json:"id"`
	Info        json.RawMessage `json:"info"`
	Connections int             `json:"connections"`
}

// Snapshot is a channel's presence (admin GET /presence).
type Snapshot struct {
	Channel string `json:"channel"`
	// Connections counts every subscribed connection of the channel,
	// on every node, with or without a presence id.
	Connections int      `json:"connections"`
	Members     []Member `json:"members"`
}

// Hold is one node's share of a (channel, id): how many of its
// connections hold it and the info of the latest to join; Gone when this
// node holds it no more. Conns is 0 while a drop's leave_delay runs.
type Hold struct {
	Channel, ID string
	Info        json.RawMessage
	Conns       int
	Gone        bool
	// Quiet: written again after Redis lost it, not a change: it makes no
	// join or leave.
	Quiet bool
}

// Count is how many of this node's connections are subscribed to a
// channel.
type Count struct {
	Channel string
	Conns   int
}

// Store keeps the cluster's presence.
type Store interface {
	// Apply writes this node's holds and counts and returns, in order,
	// the joins and leaves they made cluster-wide.
	Apply(ctx context.Context, holds []Hold, counts []Count) ([]Event, error)
	// Read is a channel's presence, every node's.
	Read(ctx context.Context, channel string) (Snapshot, error)
}

// Config configures a Tracker. Every field says what its zero value means.
type Config struct {
	// LeaveDelay is presence.leave_delay: how long after its last
	// connection dropped an id leaves; 0 = at once.
	LeaveDelay time.Duration
	// Counts says how many of this node's connections are subscribed to a
	// channel (the hub knows); nil = 0.
	Counts func(channel string) int
	// Notify hears each join and leave, in order, from the writer's
	// goroutine; nil = no one.
	Notify func(Event)
}

// MaxIDLen bounds a presence id; MaxInfoLen its info's JSON.
const (
	MaxIDLen   = 256
	MaxInfoLen = 4096
)

// ErrInvalid is wrapped by the errors of a presence the app asked for
// that cannot be taken.
var ErrInvalid = errors.New("presence: invalid")

type key struct{ channel, id string }

// holding is one (channel, id) on this node.
type holding struct {
	info  json.RawMessage
	conns int
	// timer runs while the last connection dropped and leave_delay has
	// not passed: the id is still held meanwhile.
	timer *time.Timer
}

// Tracker is this node's presence (see the package comment).
type Tracker struct {
	cfg   Config
	store Store
	log   zerolog.Logger

	mu     sync.Mutex
	held   map[key]*holding
	byConn map[string]map[string]string // connection → channel → id
	dirty  map[key]bool                 // → quiet
	counts map[string]struct{}          // channels whose count changed
	closed bool
	kick   chan struct{}
	// seq counts changes; applied is the last change the store took.
	seq, applied uint64
	done         chan struct{} // closed and replaced when applied moves

	stop    chan struct{}
	stopped chan struct{}
}

// NewTracker builds a tracker writing to store; Run starts its writer.
func NewTracker(cfg Config, store Store, log zerolog.Logger) *Tracker {
	return &Tracker{
		cfg: cfg, store: store, log: log,
		held:    map[key]*holding{},
		byConn:  map[string]map[string]string{},
		dirty:   map[key]bool{},
		counts:  map[string]struct{}{},
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
}

// Join makes connection conn hold id in channel with info, leaving the id
// it held there before, if another.
func (t *Tracker) Join(conn, channel, id string, info json.RawMessage) {
	if len(info) == 0 {
		info = json.RawMessage("null")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	chans := t.byConn[conn]
	if old, ok := chans[channel]; ok {
		if old == id {
			// Same id again: its info may have changed.
			if h := t.held[key{channel, id}]; h != nil && !slices.Equal(h.info, info) {
				h.info = info
				t.markLocked(key{channel, id}, false)
			}
			return
		}
		t.releaseLocked(key{channel, old}, true)
	}
	if chans == nil {
		chans = map[string]string{}
		t.byConn[conn] = chans
	}
	chans[channel] = id
	k := key{channel, id}
	h := t.held[k]
	if h == nil {
		h = &holding{}
		t.held[k] = h
	}
	h.info = info
	h.conns++
	if h.timer != nil {
		// A drop's delay was running: the id never left.
		h.timer.Stop()
		h.timer = nil
	}
	t.markLocked(k, false) // its info or its count of connections changed

}

// Leave takes conn's presence in channel out at once (a reply's leave, an
// unsubscribe): when conn was its last holder on this node, this node
// holds it no more.
func (t *Tracker) Leave(conn, channel string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	id, ok := t.byConn[conn][channel]
	if !ok || t.closed {
		return
	}
	t.forgetLocked(conn, channel)
	t.releaseLocked(key{channel, id}, true)
}

// Drop takes every presence of conn out, as a connection that went away:
// an id it was the last holder of leaves LeaveDelay later unless another
// connection holds it by then.
func (t *Tracker) Drop(conn string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return // the node is going: its presence is left to its lease
	}
	for channel, id := range t.byConn[conn] {
		t.releaseLocked(key{channel, id}, false)
	}
	delete(t.byConn, conn)
}

// Of is conn's presences: channel → id.
func (t *Tracker) Of(conn string) map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.byConn[conn]) == 0 {
		return nil
	}
	out := make(map[string]string, len(t.byConn[conn]))
	for ch, id := range t.byConn[conn] {
		out[ch] = id
	}
	return out
}

// Holdings is conn's presences with their info: channel → {id, info};
// what a restored session joins again (Tracker.Join each).
func (t *Tracker) Holdings(conn string) map[string]Member {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.byConn[conn]) == 0 {
		return nil
	}
	out := make(map[string]Member, len(t.byConn[conn]))
	for ch, id := range t.byConn[conn] {
		m := Member{ID: id}
		if h := t.held[key{ch, id}]; h != nil {
			m.Info = h.info
		}
		out[ch] = m
	}
	return out
}

// Counted says this node's count of channel's connections changed.
func (t *Tracker) Counted(channel string) {
	if t.cfg.Counts == nil {
		return
	}
	t.mu.Lock()
	if !t.closed {
		t.counts[channel] = struct{}{}
		t.changedLocked()
	}
	t.mu.Unlock()
}

func (t *Tracker) forgetLocked(conn, channel string) {
	delete(t.byConn[conn], channel)
	if len(t.byConn[conn]) == 0 {
		delete(t.byConn, conn)
	}
}

// releaseLocked takes one holder of k away; at once, or after LeaveDelay.
func (t *Tracker) releaseLocked(k key, now bool) {
	h := t.held[k]
	if h == nil {
		return
	}
	if h.conns--; h.conns > 0 {
		t.markLocked(k, false) // the count of its connections changed
		return
	}
	h.conns = 0
	if now || t.cfg.LeaveDelay <= 0 {
		if h.timer != nil {
			h.timer.Stop()
		}
		delete(t.held, k)
		t.markLocked(k, false)
		return
	}
	if h.timer != nil {
		return
	}
	t.markLocked(k, false) // held still, by no connection
	var timer *time.Timer
	timer = time.AfterFunc(t.cfg.LeaveDelay, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		// Only this timer's own round: a join since stopped it (and may
		// have started another).
		if cur := t.held[k]; cur == h && h.timer == timer && h.conns == 0 && !t.closed {
			delete(t.held, k)
			t.markLocked(k, false)
		}
	})
	h.timer = timer
}

func (t *Tracker) markLocked(k key, quiet bool) {
	if q, ok := t.dirty[k]; ok {
		quiet = quiet && q // a change that is not quiet stays one
	}
	t.dirty[k] = quiet
	t.changedLocked()
}

func (t *Tracker) changedLocked() {
	t.seq++
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// RewriteAll marks every holding and count to be written again, quietly:
// the store lost them (Redis restarted empty), nothing changed.
func (t *Tracker) RewriteAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.held {
		t.markLocked(k, true)
	}
	if t.cfg.Counts != nil {
		for k := range t.held {
			t.counts[k.channel] = struct{}{}
		}
	}
}

// Channels are the channels this node holds an id in.
func (t *Tracker) Channels() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for k := range t.held {
		if !slices.Contains(out, k.channel) {
			out = append(out, k.channel)
		}
	}
	return out
}

// Read is channel's presence, as the store has it.
func (t *Tracker) Read(ctx context.Context, channel string) (Snapshot, error) {
	s, err := t.store.Read(ctx, channel)
	if s.Members == nil {
		s.Members = []Member{}
	}
	s.Channel = channel
	return s, err
}

// Synced returns once every change made before it was called is in the
// store, or ctx ends.
func (t *Tracker) Synced(ctx context.Context) error {
	t.mu.Lock()
	want := t.seq
	for t.applied < want {
		done := t.done
		t.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
		t.mu.Lock()
	}
	t.mu.Unlock()
	return nil
}
