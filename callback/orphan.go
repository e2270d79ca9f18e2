package callback

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/pubsub"
)

// LostCloseN is the event number n of the close event posted for a
// connection whose node was lost (by: node_lost): its id is
// "<connection id>:9007199254740991".
//
// The node that numbered the connection's events is gone, and storing the
// last number in Redis would cost a write per message, so no node knows
// what n would come next. 2^53−1 instead: the largest integer a JSON
// number carries exactly (JavaScript, and JSON parsers that read numbers
// as doubles); a real connection never counts that far, so the id never
// collides with a real event's, sorts after all of them, and is the same
// whichever node posts it — should a lost close event be posted twice (a
// reaper dying halfway, a retry), the app drops the repeat like any other.
const LostCloseN = 1<<53 - 1

// Errors of DeliverClose, to be inspected with errors.Is. Both are counted
// in cablecar_close_events_dropped_total and logged.
var (
	// ErrCloseRejected: the app refused the close event (a 4xx other
	// than 410). Posting it again will not help.
	ErrCloseRejected = errors.New("callback: the app rejected the close event")
	// ErrCloseDropped: the app kept failing (5xx, 429, unreachable) for
	// CloseRetryFor.
	ErrCloseDropped = errors.New("callback: close event dropped: the app kept failing")
)

// DeliverClose posts the close event ev of a connection that lives on no
// node any more, as its own node would have: to rec.Path with rec.Headers,
// signed, retried like any close event, with rec's state, channels and
// claims as the "connection", and the event id of LostCloseN. ev.Type may
// be left empty; ev.By is what the caller says (node_lost). When rec
// carries the close event its node numbered before shutting down
// (rec.Close), that event is posted instead, with its own id.
//
// Of the app's reply only publish is carried out, through pub (when not
// nil): the connection has no socket left for the rest, but the room it
// was in should still hear the app's "left" notice and new presence
// count. except_self needs nothing: the connection is gone everywhere.
//
// It returns once the app took the event (2xx or 410), or with an error:
// ErrCloseRejected or ErrCloseDropped when it was dropped; ctx's error when
// ctx ended first, or ErrShutdown when Wait gave up on shutdown — then the
// event was not dropped but abandoned, and is not counted: the caller
// still holds the record and may post it again. Concurrency is the
// caller's to bound (the global cap on requests in flight applies too).
func (c *Client) DeliverClose(ctx context.Context, rec pubsub.ConnRecord, ev Event, pub Publisher) error {
	if ev.Type == "" {
		ev.Type = EventClose
	}
	if ev.Type != EventClose {
		return fmt.Errorf("callback: DeliverClose posts close events, not %q", ev.Type)
	}
	if rec.ID == "" || rec.Path == "" {
		return fmt.Errorf("callback: connection record without id or path (id %q)", rec.ID)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	info := ConnInfo{ID: rec.ID, State: rec.State, Channels: rec.Channels, Claims: rec.Claims}
	abort := make(chan struct{})
	// Not counted by c.Wait: shutdown does not wait for another node's
	// close events, whose records stay in Redis for a survivor.
	s := &Stream{c: c, t: lostTarget{info: info, pub: pub, log: c.log, timeout: c.cfg.Timeout}, id: rec.ID, path: rec.Path, headers: rec.Headers,
		doneCh: make(chan struct{}), abort: abort}
	n := uint64(LostCloseN)
	if c := rec.Close; c != nil && c.N > 0 {
		// Handed over by a node that shut down before the app took it:
		// posted as that node would have, same id, so that the app drops
		// it should that node's try have reached it after all.
		n = c.N
		ev = Event{Type: EventClose, Code: c.Code, Reason: c.Reason, By: c.By}
	}
	s.seq = n - 1 // End numbers the close event seq+1
	// The caller's ctx ending, or shutdown giving up, abandons the event:
	// what the stream drops from then on is not counted, since the caller
	// still holds the record.
	go func() {
		select {
		case <-s.doneCh:
			return
		case <-ctx.Done():
		case <-c.abort:
		}
		s.quiet.Store(true)
		close(abort)
	}()
	s.End(&ev)

	select {
	case <-s.Done():
	case <-ctx.Done():
	case <-c.abort:
	}
	done := false
	select {
	case <-s.Done():
		done = true
	default:
	}
	lost := s.closeLost.Load()
	switch {
	case done && lost == 0:
		return nil
	case !done || s.quiet.Load():
		// Abandoned, not dropped.
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("callback: close event of %s not delivered: %w", rec.ID, err)
		}
		return fmt.Errorf("callback: close event of %s not delivered: %w", rec.ID, ErrShutdown)
	case dropReason(lost-1) == dropRejected:
		return fmt.Errorf("%w (connection %s)", ErrCloseRejected, rec.ID)
	default:
		return fmt.Errorf("%w (connection %s, %s)", ErrCloseDropped, rec.ID, dropNames[lost-1])
	}
}

// ErrShutdown: Wait gave up on shutdown before the close event was
// delivered.
var ErrShutdown = errors.New("callback: shutting down")

// Publisher is where the reply to a lost connection's close event
// publishes: the broker.
type Publisher interface {
	Publish(ctx context.Context, msgs ...pubsub.Message) error
}

// lostTarget is a connection that is gone: of its reply, only what
// reaches other connections (publish) has anything to act on.
type lostTarget struct {
	info    ConnInfo
	pub     Publisher
	log     zerolog.Logger
	timeout time.Duration
}

func (t lostTarget) Info() ConnInfo { return t.info }
func (lostTarget) Fail(Failure)     {}

func (t lostTarget) Apply(r *Reply) {
	if t.pub == nil || len(r.Publish) == 0 {
		return
	}
	msgs := r.Messages("")
	ctx, cancel := context.WithTimeout(context.Background(), t.timeout)
	defer cancel()
	if err := t.pub.Publish(ctx, msgs...); err != nil {
		t.log.Warn().Err(err).Str("conn_id", t.info.ID).Msg("publish from the reply to a lost connection's close event failed")
	}
}
