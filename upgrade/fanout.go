package upgrade

import (
	"sync"

	"github.com/fasthttp/websocket"

	"github.com/cablecar/cablecar/pubsub"
)

// Fan-out: one broadcast to this node's members of its channel. The frame
// is encoded once (a websocket.PreparedMessage every writer shares); the
// members are copied out of their shard under its read lock, one move of
// pointers, and the lock is let go before any of them is handed anything.

var targetSlices = sync.Pool{New: func() any { s := make([]*Conn, 0, 64); return &s }}

// Deliver fans a broadcast out to this node's subscribers of its channel.
func (h *Hub) Deliver(m pubsub.Message) {
	s := h.chanShard(m.Channel)
	sp := targetSlices.Get().(*[]*Conn)
	s.mu.RLock()
	if ch := s.chans[m.Channel]; ch != nil {
		*sp = append((*sp)[:0], ch.members...)
	}
	s.mu.RUnlock()
	targets := *sp
	if len(targets) > 0 {
		typ := websocket.TextMessage
		if m.Binary {
			typ = websocket.BinaryMessage
		}
		pm, err := websocket.NewPreparedMessage(typ, m.Data)
		if err != nil { // only compression can fail, and it is off
			h.log.Error().Err(err).Msg("preparing a broadcast")
		} else {
			deliverTo(targets, outgoing{prepared: pm, size: len(m.Data)}, m.Except)
		}
	}
	clear(targets)
	*sp = targets[:0]
	targetSlices.Put(sp)
}

func deliverTo(targets []*Conn, out outgoing, except string) {
	for _, c := range targets {
		if c.id != except {
			c.enqueue(out)
		}
	}
}
