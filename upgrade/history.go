package upgrade

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/cablecar/cablecar/internal/jsontext"
	"github.com/cablecar/cablecar/pubsub"
)

// History on raw connections (SPEC §10): the JSON envelope, and resuming
// from a position given in the accept's Cablecar-Subscribe
// ("room:1; since=E:O").
//
// A resume never loses or repeats a message, whatever is published
// meanwhile, on whichever node: the channel is joined first with its
// live messages held back (hold), then the history after the position is
// read, queued, and the held messages follow, less those the read already
// returned (by offset). The broker records and delivers in one step
// (pubsub/history.go), so whatever was delivered before the read is in
// it, and whatever the read lacks is delivered after the join.

// connHist is a connection's history side; nil on one with neither the
// envelope nor a resume, which then costs the fan-out nothing.
type connHist struct {
	envelope bool

	mu    sync.Mutex
	holds map[string]*hold // channels whose replay is under way
	// recovered is the open event's "recovered" object, once the replays
	// are done; nil without a since.
	recovered []byte
}

// hold is a resumed channel's: its live messages while the replay runs,
// then the end of the replay, below which a message is one the replay
// already sent (a delivery that was under way as the replay ended).
type hold struct {
	msgs     []pubsub.Message
	released bool
	floor    pubsub.Position
}

// replayed reports whether the replay sent m already.
func (hd *hold) replayed(m *pubsub.Message) bool {
	return !hd.floor.IsZero() && m.Epoch == hd.floor.Epoch && m.Offset <= hd.floor.Offset
}

// cutSince reads one item of Cablecar-Subscribe: a channel, optionally
// followed by "; since=<epoch>:<offset>".
func cutSince(item string) (channel string, since *pubsub.Position, err error) {
	channel, params, found := strings.Cut(item, ";")
	channel = strings.TrimSpace(channel)
	if !found {
		return channel, nil, nil
	}
	for p := range strings.SplitSeq(params, ";") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if k != "since" {
			return "", nil, fmt.Errorf("%q: unknown parameter %q (only since=<epoch>:<offset>)", channel, k)
		}
		pos, err := pubsub.ParsePosition(strings.TrimSpace(v))
		if err != nil {
			return "", nil, fmt.Errorf("%q: %w", channel, err)
		}
		since = &pos
	}
	return channel, since, nil
}

// histAccepted gives c its history side when the accept asked for the
// envelope or a resume, and holds the live messages of the channels to
// resume until their replay. Called before c joins its channels.
func (s *Server) histAccepted(c *Conn, acc *acceptance) {
	if c.ac != nil || !acc.envelope && len(acc.since) == 0 {
		return // ActionCable streams have their own history (actioncable_history.go)
	}
	c.hist = &connHist{envelope: acc.envelope}
	if len(acc.since) > 0 {
		c.hist.holds = make(map[string]*hold, len(acc.since))
		for ch := range acc.since {
			c.hist.holds[ch] = &hold{}
		}
	}
}

// replay queues, for each channel of since, what the history holds after
// its position, then releases the messages held meanwhile, and records
// for the open event whether each channel was recovered. Called once c
// is a member of its channels.
func (c *Conn) replay(since map[string]pubsub.Position) {
	if len(since) == 0 {
		return
	}
	h := pubsub.HistoryOf(c.hub.broker)
	recovered := make(map[string]bool, len(since))
	replays := make(map[string]pubsub.Replay, len(since))
	for ch, pos := range since {
		if h == nil || !h.Records(ch) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.hub.cfg.BrokerTimeout)
		r, err := h.After(ctx, ch, pos)
		cancel()
		if err != nil {
			c.log.Warn().Err(err).Str("channel", ch).Msg("reading the history to resume failed: not recovered")
			continue
		}
		replays[ch], recovered[ch] = r, r.Complete
	}
	ch := c.hist
	ch.mu.Lock()
	defer ch.mu.Unlock()
	for name := range since {
		r := replays[name]
		var last pubsub.Position
		for i := range r.Messages {
			c.enqueue(ch.out(&r.Messages[i]))
			last = pubsub.PositionOf(&r.Messages[i])
		}
		if last.IsZero() && r.Complete {
			last = since[name]
		}
		hd := ch.holds[name]
		hd.floor = last
		for _, m := range hd.msgs {
			if !hd.replayed(&m) {
				c.enqueue(ch.out(&m))
			}
		}
		hd.msgs, hd.released = nil, true
	}
	ch.recovered = appendRecovered(nil, since, recovered)
}

func appendRecovered(dst []byte, since map[string]pubsub.Position, recovered map[string]bool) []byte {
	dst = append(dst, '{')
	first := true
	for name := range since {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = jsontext.AppendString(dst, name)
		if recovered[name] {
			dst = append(dst, ":true"...)
		} else {
			dst = append(dst, ":false"...)
		}
	}
	return append(dst, '}')
}

// openRecovered is the open event's "recovered" object, or nil.
func (c *Conn) openRecovered() []byte {
	if c.hist == nil {
		return nil
	}
	c.hist.mu.Lock()
	defer c.hist.mu.Unlock()
	return c.hist.recovered
}

// out is m as this connection is sent it.
func (ch *connHist) out(m *pubsub.Message) outgoing {
	if ch.envelope {
		return envelopeOut(m)
	}
	return plainOut(m)
}

// histCounted counts the hub's connections with a history side.
func (h *Hub) histCounted(c *Conn, d int64) {
	if c.hist != nil {
		h.histLive.Add(d)
	}
}

// histDeliver takes from targets the connections with a history side and
// delivers m to them itself: held while their replay runs, else in the
// envelope or as it is. It returns the others, for the plain fan-out.
// The envelope frame is built once for all of them.
func (h *Hub) histDeliver(m pubsub.Message, targets []*Conn) []*Conn {
	rest := targets[:0]
	var env, plain *outgoing
	for _, c := range targets {
		if c.hist == nil {
			rest = append(rest, c)
			continue
		}
		if c.id == m.Except {
			continue
		}
		ch := c.hist
		ch.mu.Lock()
		if hd := ch.holds[m.Channel]; hd != nil {
			if !hd.released {
				held := m
				held.Data = bytes.Clone(m.Data) // the broker may reuse its buffer
				hd.msgs = append(hd.msgs, held)
				ch.mu.Unlock()
				continue
			}
			if hd.replayed(&m) {
				ch.mu.Unlock()
				continue
			}
		}
		var o *outgoing
		if ch.envelope {
			if env == nil {
				e := envelopeOut(&m)
				env = &e
			}
			o = env
		} else {
			if plain == nil {
				p := plainOut(&m)
				plain = &p
			}
			o = plain
		}
		if c.deliver(*o) {
			h.metrics.messagesOut.Inc()
			h.metrics.bytesOut.Add(float64(o.size))
		}
		ch.mu.Unlock()
	}
	// The caller clears the tail of targets it hands back to its pool.
	clear(targets[len(rest):])
	return rest
}
