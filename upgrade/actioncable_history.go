package upgrade

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/internal/jsontext"
	"github.com/cablecar/cablecar/pubsub"
)

// History on ActionCable ext connections (actioncable-v1-ext-json, SPEC
// §10, the wire of AnyCable's extended protocol): broadcasts carry
// "stream_id", "epoch" and "offset"; a "history" command, or the history
// object inside a "subscribe" (answered after confirm_subscription),
// replays what the subscription missed on each of its streams, then
// confirm_history, or reject_history when the history no longer reaches
// back.
//
// A replay runs like a raw connection's resume (history.go): the
// subscription's streams are held, their history read, the missed
// messages sent, and the held ones released, less those the replay sent.
// Each stream also keeps the last offset sent on it, so that a replay
// never repeats what the connection was sent live before it asked.

// acHist is an ext connection's history side; nil on other connections.
type acHist struct {
	mu      sync.Mutex
	pending map[string]*actioncable.HistoryRequest // identifier → the request its subscribe carried
	heldFor map[string][]string                    // identifier → the streams held for its pending request
	streams map[string]*acStreamHist               // stream → its replay state
}

type acStreamHist struct {
	holding int              // replays under way on this stream
	held    []pubsub.Message // its live messages meanwhile
	last    pubsub.Position  // the last recorded message sent on it
}

// acExt is the connection's history side when it speaks the ext protocol.
func (c *Conn) acExt() *acHist {
	if c.ac == nil || c.ac.proto != actioncable.Ext {
		return nil
	}
	return c.ac.hist
}

// acHistoryOnSubscribe keeps the history object of a subscribe, to be
// answered once the subscription is confirmed.
func (c *Conn) acHistoryOnSubscribe(id string, req *actioncable.HistoryRequest) {
	h := c.acExt()
	if h == nil || req == nil {
		return
	}
	h.mu.Lock()
	if h.pending == nil {
		h.pending = map[string]*actioncable.HistoryRequest{}
	}
	h.pending[id] = req
	h.mu.Unlock()
}

// acHoldStream holds stream's live messages before id joins it, when id
// waits for a replay: so nothing live overtakes the replay. Called with
// opMu held, before the join.
func (c *Conn) acHoldStream(id, stream string) {
	h := c.acExt()
	if h == nil {
		return
	}
	h.mu.Lock()
	if h.pending[id] != nil {
		h.stream(stream).holding++
		if h.heldFor == nil {
			h.heldFor = map[string][]string{}
		}
		h.heldFor[id] = append(h.heldFor[id], stream)
	}
	h.mu.Unlock()
}

// acRejected lets go of what a rejected subscription's history held.
func (c *Conn) acRejected(id string) {
	h := c.acExt()
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.pending, id)
	for _, s := range h.heldFor[id] {
		c.acRelease(s, h.stream(s))
	}
	delete(h.heldFor, id)
}

// acRelease ends one hold of a stream; the last one sends what it held.
// The caller holds h.mu.
func (c *Conn) acRelease(s string, sh *acStreamHist) {
	sh.holding--
	if sh.holding > 0 {
		return
	}
	for k := range sh.held {
		c.acFlushHeld(s, sh, &sh.held[k])
	}
	sh.held = nil
}

func (h *acHist) stream(s string) *acStreamHist {
	if h.streams == nil {
		h.streams = map[string]*acStreamHist{}
	}
	sh := h.streams[s]
	if sh == nil {
		sh = &acStreamHist{}
		h.streams[s] = sh
	}
	return sh
}

// acConfirmed answers the history a subscribe carried, now that id is
// confirmed.
func (c *Conn) acConfirmed(id string) {
	h := c.acExt()
	if h == nil {
		return
	}
	h.mu.Lock()
	req := h.pending[id]
	delete(h.pending, id)
	h.mu.Unlock()
	if req != nil {
		c.acReplay(id, req)
	}
}

// acHistoryCommand answers a history command for a subscription held.
func (c *Conn) acHistoryCommand(id string, req *actioncable.HistoryRequest) {
	if c.acExt() == nil || !c.acSubscribed(id) {
		c.acMalformed(actioncable.NotSubscribed.String())
		return
	}
	c.acReplay(id, req)
}

// acReplay replays id's streams from req, then confirms or rejects the
// history. The streams held since their join (a subscribe's history) stay
// held; the others are held from now.
func (c *Conn) acReplay(id string, req *actioncable.HistoryRequest) {
	h := c.acExt()
	c.ac.mu.RLock()
	var streams []string
	if sub := c.ac.sub(intern(id)); sub != nil {
		streams = atomStrings(sub.streams)
	}
	c.ac.mu.RUnlock()
	h.mu.Lock()
	held := h.heldFor[id]
	delete(h.heldFor, id)
	for _, s := range streams {
		if !slices.Contains(held, s) {
			h.stream(s).holding++
			held = append(held, s)
		}
	}
	h.mu.Unlock()

	hist := pubsub.HistoryOf(c.hub.broker)
	ok := hist != nil
	replays := make([]pubsub.Replay, len(streams))
	for i, s := range streams {
		if !ok {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.hub.cfg.BrokerTimeout)
		var r pubsub.Replay
		var err error
		switch pos, given := req.Streams[s]; {
		case !hist.Records(s):
			err = pubsub.ErrNoHistory
		case given:
			r, err = hist.After(ctx, s, pubsub.Position{Epoch: pos.Epoch, Offset: pos.Offset})
		case req.Since > 0:
			r, err = hist.Since(ctx, s, time.Unix(req.Since, 0))
		default:
			r.Complete = true // nothing asked of this stream
		}
		cancel()
		if err != nil {
			c.log.Debug().Err(err).Str("stream", s).Msg("actioncable: history not available")
		}
		replays[i], ok = r, err == nil && r.Complete
	}

	h.mu.Lock()
	for i, s := range streams {
		sh := h.stream(s)
		if ok {
			for k := range replays[i].Messages {
				c.acSendRecorded(id, sh, &replays[i].Messages[k])
			}
		}
	}
	for _, s := range held {
		c.acRelease(s, h.stream(s))
	}
	h.mu.Unlock()
	ack := actioncable.ConfirmHistory
	if !ok {
		ack = actioncable.RejectHistory
	}
	c.acSend(actioncable.AppendAck(nil, ack, id))
}

// acSendRecorded sends a replayed message to id, unless the stream was
// sent it already. The caller holds h.mu.
func (c *Conn) acSendRecorded(id string, sh *acStreamHist, m *pubsub.Message) {
	if sent(sh.last, m) {
		return
	}
	sh.last = pubsub.PositionOf(m)
	frame := appendExtMessage(nil, id, m)
	c.enqueue(outgoing{frame: newFrame(false, frame), size: len(frame)})
}

// acFlushHeld sends a held message to every identifier streaming it.
// The caller holds h.mu.
func (c *Conn) acFlushHeld(stream string, sh *acStreamHist, m *pubsub.Message) {
	if m.Epoch != "" {
		if sent(sh.last, m) {
			return
		}
		sh.last = pubsub.PositionOf(m)
	}
	c.ac.mu.RLock()
	ids := c.ac.streamIDs(nil, intern(stream))
	c.ac.mu.RUnlock()
	for _, id := range ids {
		frame := appendExtMessage(nil, id.Value(), m)
		c.enqueue(outgoing{frame: newFrame(false, frame), size: len(frame)})
	}
}

// sent reports whether a stream whose last recorded message was at last
// has been sent m.
func sent(last pubsub.Position, m *pubsub.Message) bool {
	return !last.IsZero() && m.Epoch == last.Epoch && m.Offset <= last.Offset
}

// acDeliverExt is the fan-out of a broadcast to an ext connection: held
// while a replay of its stream runs, dropped when the stream was sent it
// already, else sent to each identifier streaming it with its stream and
// position, the frame of each (stream, identifier) built once (f). It
// returns the frames and bytes it wrote itself, for the metrics.
func (c *Conn) acDeliverExt(m *pubsub.Message, f *acFrames) (written, size int) {
	h := c.ac.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	sh := h.streams[m.Channel]
	if sh == nil && m.Epoch != "" {
		sh = h.stream(m.Channel)
	}
	if sh != nil {
		if sh.holding > 0 {
			held := *m
			held.Data = bytes.Clone(m.Data) // the broker may reuse its buffer
			sh.held = append(sh.held, held)
			return 0, 0
		}
		if m.Epoch != "" {
			if sent(sh.last, m) {
				return 0, 0
			}
			sh.last = pubsub.PositionOf(m)
		}
	}
	c.ac.mu.RLock()
	var buf [8]atom
	ids := c.ac.streamIDs(buf[:0], f.ch)
	plain := len(c.ac.plain) > 0 && slices.Contains(c.ac.plain, f.ch)
	c.ac.mu.RUnlock()
	if plain {
		c.enqueue(outgoing{data: m.Data, binary: m.Binary, size: len(m.Data)})
	}
	for _, id := range ids {
		o := f.getExt(id, m)
		if c.deliver(o) {
			written++
			size += o.size
		}
	}
	return written, size
}

// getExt is the ext frame of (m's stream, identifier), built once per
// broadcast like get's.
func (f *acFrames) getExt(identifier atom, m *pubsub.Message) outgoing {
	f.mu.Lock()
	defer f.mu.Unlock()
	if o, ok := f.ext[identifier]; ok {
		return o
	}
	plain := f.b.Frame(identifier.Value())
	msg := appendExtFields(append(make([]byte, 0, len(plain)+96), plain[:len(plain)-1]...), m)
	o := outgoing{frame: newFrame(false, msg), size: len(msg)}
	if f.ext == nil {
		f.ext = make(map[atom]outgoing, 1)
	}
	f.ext[identifier] = o
	return o
}

// appendExtMessage is {"identifier":I,"message":M,"stream_id":S,"epoch":E,"offset":O}
// (no position for a message not recorded).
func appendExtMessage(dst []byte, id string, m *pubsub.Message) []byte {
	dst = actioncable.AppendMessage(dst, id, m.Data, actioncable.IsJSON(m.Data))
	return appendExtFields(dst[:len(dst)-1], m)
}

// appendExtFields closes a message frame (without its final '}') with the
// broadcast's stream and position.
func appendExtFields(dst []byte, m *pubsub.Message) []byte {
	dst = append(dst, `,"stream_id":`...)
	dst = jsontext.AppendString(dst, m.Channel)
	if m.Epoch != "" {
		dst = append(dst, `,"epoch":`...)
		dst = jsontext.AppendString(dst, m.Epoch)
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendUint(dst, m.Offset, 10)
	}
	return append(dst, '}')
}
