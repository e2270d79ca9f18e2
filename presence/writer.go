package presence

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"
)

// The writer: one goroutine hands what changed to the store, as soon as
// something did but at most every flushGap, so that a burst of joins makes
// one round trip; it backs off while the store fails, the changes waiting
// in memory (one entry per (channel, id), however many changes). It is the
// one caller of Store.Apply, so the store sees one node's changes in the
// order they were made, and Notify hears the store's decisions in that
// order.
const (
	flushGap   = 5 * time.Millisecond
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
	// applyTimeout bounds one Apply.
	applyTimeout = 5 * time.Second
)

// Run writes changes until Close. Call it once.
func (t *Tracker) Run() {
	defer close(t.stopped)
	var backoff time.Duration
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		wait := flushGap
		if backoff > 0 {
			wait = backoff
		} else {
			select {
			case <-t.stop:
				return
			case <-t.kick:
			}
		}
		timer.Reset(wait)
		select {
		case <-t.stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		if err := t.flush(); err != nil {
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			t.log.Warn().Err(err).Dur("retry_in", backoff).Msg("presence: writing this node's presence failed; retrying (changes wait in memory)")
			continue
		}
		backoff = 0
	}
}

// Close stops the writer; what it had not written is left. Timers of
// drops still running do nothing more.
func (t *Tracker) Close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	for _, h := range t.held {
		if h.timer != nil {
			h.timer.Stop()
		}
	}
	t.mu.Unlock()
	close(t.stop)
}

// Wait returns when Run has returned (after Close).
func (t *Tracker) Wait() { <-t.stopped }

// flush writes what is dirty; on failure it is dirty again.
func (t *Tracker) flush() error {
	t.mu.Lock()
	seq := t.seq
	if len(t.dirty) == 0 && len(t.counts) == 0 {
		t.applied = seq
		t.movedLocked()
		t.mu.Unlock()
		return nil
	}
	holds := make([]Hold, 0, len(t.dirty))
	for k, quiet := range t.dirty {
		h := Hold{Channel: k.channel, ID: k.id, Quiet: quiet}
		if cur := t.held[k]; cur != nil {
			h.Info, h.Conns = cur.info, cur.conns
		} else {
			h.Gone = true
		}
		holds = append(holds, h)
	}
	// In a fixed order, ids gone first: a connection that switched ids
	// is heard leaving the old one before joining the new one, not in
	// the map's order of the moment.
	slices.SortFunc(holds, func(a, b Hold) int {
		if a.Gone != b.Gone {
			if a.Gone {
				return -1
			}
			return 1
		}
		return cmp.Or(strings.Compare(a.Channel, b.Channel), strings.Compare(a.ID, b.ID))
	})
	chans := make([]string, 0, len(t.counts))
	for ch := range t.counts {
		chans = append(chans, ch)
	}
	t.dirty = map[key]bool{}
	t.counts = map[string]struct{}{}
	t.mu.Unlock()

	var counts []Count
	if t.cfg.Counts != nil {
		counts = make([]Count, len(chans))
		for i, ch := range chans {
			counts[i] = Count{Channel: ch, Conns: t.cfg.Counts(ch)}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), applyTimeout)
	events, err := t.store.Apply(ctx, holds, counts)
	cancel()
	if err != nil {
		t.mu.Lock()
		for _, h := range holds {
			if _, again := t.dirty[key{h.Channel, h.ID}]; !again {
				t.dirty[key{h.Channel, h.ID}] = h.Quiet
			}
		}
		for _, ch := range chans {
			t.counts[ch] = struct{}{}
		}
		t.mu.Unlock()
		return err
	}
	if t.cfg.Notify != nil {
		for _, ev := range events {
			t.cfg.Notify(ev)
		}
	}
	t.mu.Lock()
	t.applied = seq
	t.movedLocked()
	t.mu.Unlock()
	return nil
}

func (t *Tracker) movedLocked() {
	close(t.done)
	t.done = make(chan struct{})
}
