package pubsub

import (
	"context"
	"crypto/rand"
	"strconv"
	"sync"
	"time"
)

// memHistory is the memory broker's history: a ring per channel. Its
// epochs are a random text drawn at the broker's start plus a count of
// the rings it made, so a restart, or a ring dropped after its TTL, never
// reuses one.
type memHistory struct {
	cfg  HistoryConfig
	now  func() time.Time
	base string // random, per broker start
	born time.Time

	mu    sync.Mutex // guards rings, made, sweep; never held across Deliver
	rings map[string]*ring
	made  uint64
	sweep time.Time // when idle rings are next dropped
}

// ring is one channel's history. Its lock is held while a message is
// recorded and delivered, so deliveries leave in offset order and a read
// never sees an offset not yet handed to the sink, or misses one that was.
type ring struct {
	mu    sync.Mutex
	epoch string
	last  uint64     // the offset given last
	buf   []memEntry // oldest at head, len ≤ size
	head  int
	n     int
}

type memEntry struct {
	at  time.Time
	msg Message
}

// WithHistory makes m keep history as cfg says (SPEC §10). Call it before
// Start.
func (m *Memory) WithHistory(cfg HistoryConfig) *Memory {
	if cfg.Size > 0 {
		m.hist = newMemHistory(cfg, time.Now)
	}
	return m
}

func newMemHistory(cfg HistoryConfig, now func() time.Time) *memHistory {
	// 12 characters of rand.Text's base32: 60 random bits, and room left
	// for the count within the 32 an epoch may have.
	return &memHistory{cfg: cfg, now: now, base: rand.Text()[:12], born: now().Truncate(time.Millisecond), rings: map[string]*ring{}}
}

func (m *Memory) history() History {
	if m.hist == nil {
		return nil
	}
	return m.hist
}

func (h *memHistory) Records(channel string) bool { return h.cfg.Records(channel) }

// ringFor returns channel's ring, made when create, and drops the rings
// nothing was recorded in for a TTL, at most once per TTL.
func (h *memHistory) ringFor(channel string, create bool) *ring {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	if now.After(h.sweep) {
		h.sweep = now.Add(h.cfg.TTL)
		for name, r := range h.rings {
			r.mu.Lock()
			idle := r.n == 0 || now.Sub(r.at(r.n-1)) > h.cfg.TTL
			r.mu.Unlock()
			if idle {
				delete(h.rings, name)
			}
		}
	}
	r := h.rings[channel]
	if r == nil && create {
		h.made++
		r = &ring{epoch: h.base + strconv.FormatUint(h.made, 36), buf: make([]memEntry, 0, min(h.cfg.Size, 64))}
		h.rings[channel] = r
	}
	return r
}

func (r *ring) at(i int) time.Time { return r.buf[(r.head+i)%len(r.buf)].at }

// record numbers msg, keeps it and, with the ring still locked, calls
// deliver, so that deliveries to the sink follow offset order.
func (h *memHistory) record(msg *Message, deliver func(Message)) {
	r := h.ringFor(msg.Channel, true)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last++
	msg.Epoch, msg.Offset = r.epoch, r.last
	kept := *msg
	kept.Data = append([]byte(nil), msg.Data...) // the publisher may reuse its buffer
	e := memEntry{at: h.now(), msg: kept}
	switch {
	case len(r.buf) < h.cfg.Size:
		r.buf = append(r.buf, e)
		r.n++
	default:
		r.buf[r.head] = e
		r.head = (r.head + 1) % len(r.buf)
	}
	deliver(*msg)
}

// retained copies the messages the ring holds, oldest first, with those
// older than the TTL left out, and returns the offset of the first
// retained one (0 when none).
func (r *ring) retained(cutoff time.Time, keep func(*memEntry) bool) (msgs []Message, first uint64) {
	for i := 0; i < r.n; i++ {
		e := &r.buf[(r.head+i)%len(r.buf)]
		if e.at.Before(cutoff) {
			continue
		}
		if first == 0 {
			first = e.msg.Offset
		}
		if keep(e) {
			msgs = append(msgs, e.msg)
		}
	}
	return msgs, first
}

func (h *memHistory) After(_ context.Context, channel string, pos Position) (Replay, error) {
	if !h.Records(channel) {
		return Replay{}, ErrNoHistory
	}
	r := h.ringFor(channel, false)
	if r == nil {
		return Replay{}, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	msgs, _ := r.retained(h.now().Add(-h.cfg.TTL), func(e *memEntry) bool { return e.msg.Offset > pos.Offset })
	return completeAfter(pos, r.epoch, r.last, msgs), nil
}

func (h *memHistory) Since(_ context.Context, channel string, t time.Time) (Replay, error) {
	if !h.Records(channel) {
		return Replay{}, ErrNoHistory
	}
	// What was recorded before this broker started is gone.
	if t.Before(h.born) {
		return Replay{}, nil
	}
	r := h.ringFor(channel, false)
	if r == nil {
		// Nothing recorded in a TTL, or ever: nothing since t was dropped
		// unless t is older than the TTL.
		return completeSince(nil, !t.Before(h.now().Add(-h.cfg.TTL))), nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cutoff := h.now().Add(-h.cfg.TTL)
	msgs, first := r.retained(cutoff, func(e *memEntry) bool { return !e.at.Before(t) })
	var before bool
	switch {
	case len(msgs) == 0:
		// Nothing retained since t: complete if nothing since t was ever
		// recorded (the newest, which no count trims, is older than t).
		before = r.n == 0 || r.at(r.n-1).Before(t)
	default:
		// The one before the first returned is retained, or there was
		// none before it.
		before = msgs[0].Offset == 1 || msgs[0].Offset > first
	}
	return completeSince(msgs, before), nil
}
