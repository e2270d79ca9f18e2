package upgrade

import (
	"runtime"
	"sync"

	"github.com/cablecar/cablecar/pubsub"
)

// Fan-out: one broadcast to this node's members of its channel. The frame
// is built once and shared by every member (frame.go); the members are copied out of their shard under its read lock, one move of
// pointers, and the lock is let go before any of them is handed anything.
// A large audience is split into parts delivered by up to GOMAXPROCS
// goroutines at once, this one included; a small one is delivered here,
// with no goroutine. Each member's frame is written by the fan-out itself
// when the socket takes it at once and nothing is queued ahead of it
// (Conn.deliver); only a member whose socket or queue is backed up gets a
// writer goroutine.
//
// Order: Deliver returns only once every part is queued, and a broker
// calls it for one publisher's messages one after the other (Sink), so two
// broadcasts of one publisher reach each connection's queue, and its
// socket, in the order they were published.

// fanoutPart is the fewest members a goroutine of a split fan-out takes:
// below that, starting it costs more than it saves.
const fanoutPart = 512

var targetSlices = sync.Pool{New: func() any { s := make([]*Conn, 0, 64); return &s }}

// Deliver fans a broadcast out to this node's subscribers of its channel.
func (h *Hub) Deliver(m pubsub.Message) {
	if m.Close != nil {
		h.closeChannel(m.Channel, m.Close)
		return
	}
	if m.Except == presenceMark { // presence.go
		h.presenceDeliver(m)
		return
	}
	s := h.chanShard(m.Channel)
	sp := targetSlices.Get().(*[]*Conn)
	s.mu.RLock()
	if ch := s.chans[m.Channel]; ch != nil {
		*sp = append((*sp)[:0], ch.members...)
	}
	s.mu.RUnlock()
	targets := *sp
	if len(targets) > 0 && h.ac.any() {
		targets = h.acDeliver(m, targets) // ActionCable connections: actioncable_hub.go
	}
	if len(targets) > 0 && h.histLive.Load() > 0 {
		targets = h.histDeliver(m, targets) // envelope, resume: history.go
	}
	if len(targets) > 0 {
		out := outgoing{frame: newFrame(m.Binary, m.Data), size: len(m.Data)}
		fanout(targets, out, m.Except, runtime.GOMAXPROCS(0))
	}
	clear(targets)
	*sp = targets[:0]
	targetSlices.Put(sp)
}

// fanout queues out for every target but the one whose id is except, in
// up to workers parts at once, and returns when all are queued.
func fanout(targets []*Conn, out outgoing, except string, workers int) {
	parts := min(workers, len(targets)/fanoutPart)
	if parts <= 1 {
		deliverTo(targets, out, except)
		return
	}
	size := (len(targets) + parts - 1) / parts
	var wg sync.WaitGroup
	for rest := targets[size:]; len(rest) > 0; {
		part := rest[:min(size, len(rest))]
		rest = rest[len(part):]
		wg.Go(func() { deliverTo(part, out, except) })
	}
	deliverTo(targets[:size], out, except)
	wg.Wait()
}

// deliverTo delivers out to targets but except; what it writes itself is
// counted in the metrics once, at the end, not once per member.
func deliverTo(targets []*Conn, out outgoing, except string) {
	written := 0
	for _, c := range targets {
		if c.id != except && c.deliver(out) {
			written++
		}
	}
	if written > 0 {
		m := targets[0].hub.metrics
		m.messagesOut.Add(float64(written))
		m.bytesOut.Add(float64(written * out.size))
	}
}
