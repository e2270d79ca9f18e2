package upgrade

import (
	"runtime"
	"slices"
	"sync"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/pubsub"
)

// ActionCable fan-out: a broadcast to stream S reaches each subscription
// (connection, I) streaming S as {"identifier":I,"message":payload}. The
// frame of one (S, I) — its JSON and its WebSocket header — is built once
// per broadcast and shared by every connection with that pair (a Turbo
// page's viewers share one identifier), and written by the fan-out itself
// when the socket takes it at once (Conn.deliver), as raw broadcasts are.
// A large audience is split over up to GOMAXPROCS goroutines like the raw
// fan-out (fanout.go), with the same order: Deliver returns only once
// every part is done.

// acDeliver delivers a broadcast to the ActionCable connections among
// targets and returns the other targets, in the same backing array, for
// the raw fan-out.
func (h *Hub) acDeliver(m pubsub.Message, targets []*Conn) []*Conn {
	raw := targets[:0]
	sp := targetSlices.Get().(*[]*Conn)
	acs := (*sp)[:0]
	for _, c := range targets {
		switch {
		case c.ac == nil:
			raw = append(raw, c)
		case c.id != m.Except:
			acs = append(acs, c)
		}
	}
	clear(targets[len(raw):])
	if len(acs) > 0 {
		acFanout(acs, m, runtime.GOMAXPROCS(0))
	}
	clear(acs)
	*sp = acs[:0]
	targetSlices.Put(sp)
	return raw
}

// acFanout delivers m to conns, ActionCable connections all, in up to
// workers parts at once, and returns when all are done.
func acFanout(conns []*Conn, m pubsub.Message, workers int) {
	f := &acFrames{ch: intern(m.Channel)}
	f.b.Reset(m.Data)
	parts := min(workers, len(conns)/fanoutPart)
	if parts <= 1 {
		acDeliverTo(conns, &m, f)
		return
	}
	size := (len(conns) + parts - 1) / parts
	var wg sync.WaitGroup
	for rest := conns[size:]; len(rest) > 0; {
		part := rest[:min(size, len(rest))]
		rest = rest[len(part):]
		wg.Go(func() { acDeliverTo(part, &m, f) })
	}
	acDeliverTo(conns[:size], &m, f)
	wg.Wait()
}

// acFrames is one broadcast's frames, shared by the parts of its fan-out:
// a frame is built under mu the first time any part asks for its
// identifier, and each part keeps those it used in a small cache of its
// own, so that mu is taken once per (part, identifier), not once per
// connection.
type acFrames struct {
	ch    atom // the broadcast's stream
	mu    sync.Mutex
	b     actioncable.Broadcast
	built map[atom]outgoing
	ext   map[atom]outgoing // ext connections' frames (actioncable_history.go)
}

func (f *acFrames) get(identifier atom) outgoing {
	f.mu.Lock()
	defer f.mu.Unlock()
	if o, ok := f.built[identifier]; ok {
		return o
	}
	msg := f.b.Frame(identifier.Value())
	o := outgoing{frame: newFrame(false, msg), size: len(msg)}
	if f.built == nil {
		f.built = make(map[atom]outgoing, 1)
	}
	f.built[identifier] = o
	return o
}

// acPartFrames is how many identifiers one part keeps at hand.
const acPartFrames = 4

// acDeliverTo is one part of an ActionCable fan-out; what it writes
// itself is counted in the metrics once, at the end.
func acDeliverTo(conns []*Conn, m *pubsub.Message, f *acFrames) {
	var (
		ids   [8]atom
		local [acPartFrames]struct {
			id  atom
			out outgoing
		}
		n       int
		written int
		bytes   int
	)
	for _, c := range conns {
		ac := c.ac
		if ac.hist != nil {
			w, b := c.acDeliverExt(m, f)
			written, bytes = written+w, bytes+b
			continue
		}
		ac.mu.RLock()
		list := ac.streamIDs(ids[:0], f.ch)
		plain := len(ac.plain) > 0 && slices.Contains(ac.plain, f.ch)
		ac.mu.RUnlock()
		if plain {
			c.enqueue(outgoing{data: m.Data, binary: m.Binary, size: len(m.Data)})
		}
		for _, id := range list {
			var o outgoing
			found := false
			for i := range n {
				if local[i].id == id {
					o, found = local[i].out, true
					break
				}
			}
			if !found {
				o = f.get(id)
				if n < acPartFrames {
					local[n].id, local[n].out = id, o
					n++
				}
			}
			if c.deliver(o) {
				written++
				bytes += o.size
			}
		}
		clear(list)
	}
	if written > 0 {
		mt := conns[0].hub.metrics
		mt.messagesOut.Add(float64(written))
		mt.bytesOut.Add(float64(bytes))
	}
}
