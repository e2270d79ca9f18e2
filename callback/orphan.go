package callback

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
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

// ErrClosesFull is returned by PostLost while callback.max_pending_closes
// close events wait already: it took nothing. The lost connection's
// record is still in Redis; it waits there rather than push out a close
// event that has no record anywhere else.
var ErrClosesFull = errors.New("callback: too many close events waiting for the app")

// ErrShutdown: Wait gave up on shutdown; nothing more is posted.
var ErrShutdown = errors.New("callback: shutting down")

// PostLost hands over the close event ev of a connection that lives on no
// node any more, to be posted as its own node would have: to rec.Path with
// rec.Headers, signed, with rec's state, channels and claims as the
// "connection", and the event id of LostCloseN. ev.Type may be left empty;
// ev.By is what the caller says (node_lost). When rec carries the close
// event its node numbered before shutting down (rec.Close), that event is
// posted instead, with its own id.
//
// It returns at once. The event goes into the close queue, is tried as
// soon as a slot of the global cap is free, and is then retried like a
// close event of this node's own (for close_retry_for, at most 30 s
// apart): posting a lost node's 100k close events costs 100k small
// entries and the queue's one goroutine, and never blocks the caller for
// as long as the app is down. While max_pending_closes events wait, it
// takes nothing and returns ErrClosesFull; once shutdown gave up,
// ErrShutdown; a record that cannot be posted (no id or path), another
// error.
//
// settled is called once the app took the event (2xx or 410) or it was
// finally dropped (rejected, retried for close_retry_for, pushed out of a
// full queue), from the goroutine that settled it; it must not block. It
// is never called when stop closed, or shutdown gave up, first: the event
// is then abandoned (not counted as dropped), and its record is the
// caller's to post again.
//
// Of the app's reply only publish is carried out, through the publisher
// (SetPublisher): the connection has no socket left for the rest, but the
// room it was in should still hear the app's "left" notice and new
// presence count. except_self needs nothing: the connection is gone
// everywhere.
func (c *Client) PostLost(rec registry.ConnRecord, ev Event, stop <-chan struct{}, settled func()) error {
	if ev.Type == "" {
		ev.Type = EventClose
	}
	if ev.Type != EventClose {
		return fmt.Errorf("callback: PostLost posts close events, not %q", ev.Type)
	}
	if rec.ID == "" || rec.Path == "" {
		return fmt.Errorf("callback: connection record without id or path (id %q)", rec.ID)
	}
	n := uint64(LostCloseN)
	if hc := rec.Close; hc != nil && hc.N > 0 {
		// Handed over by a node that shut down before the app took it:
		// posted as that node would have, same id, so that the app drops
		// it should that node's try have reached it after all.
		n = hc.N
		ev = Event{Type: EventClose, Code: hc.Code, Reason: hc.Reason, By: hc.By}
	}
	if rec.ActionCable {
		// The app runs unsubscribed for each (SPEC §9).
		ev.Identifiers = append([]string{}, rec.Identifiers...)
	}
	info := ConnInfo{ID: rec.ID, State: rec.State, Channels: rec.Channels, Claims: rec.Claims}
	// Not counted by c.Wait: shutdown does not wait for another node's
	// close events, whose records stay in Redis for a survivor.
	s := &Stream{c: c, t: lostTarget{info: info, pub: c.pub, log: c.log, timeout: c.cfg.Timeout},
		id: rec.ID, path: rec.Path, headers: rec.Headers, doneCh: make(chan struct{}),
		abort: stop, closing: true, seq: n, after: settled}
	batch := []queued{{ev: ev, n: n}}
	return c.closes.admit(s, appendBody(nil, rec.ID, info, batch), spanOf(batch))
}

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
