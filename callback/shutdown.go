package callback

// The shutdown event (SPEC §5): posted, to connections that asked for it in
// Cablecar-Events, when the node begins to shut down, so that the app can
// say goodbye (Iodine's on_shutdown) before the 1012. The node waits a
// bounded time for the app's reply, so it needs to know when the batch
// holding the event was answered: PushShutdown hands out a channel for it.

// EventShutdown is the event a connection that asked for it gets on
// shutdown, before its 1012.
const EventShutdown EventType = "shutdown"

// streamAck is a channel closed once event n has been delivered and its
// reply applied, or can no longer be.
type streamAck struct {
	n  uint64
	ch chan struct{}
}

// PushShutdown queues the shutdown event, without waiting for room (it is
// one small event, and shutdown may not wait behind a full queue), and
// returns a channel closed once the app's reply to the batch holding it
// has been applied, or once that can no longer happen (the event was
// refused or dropped, the stream ended). A stream that is already closing
// or failed refuses it: the channel is then closed at once.
func (s *Stream) PushShutdown() <-chan struct{} {
	ch := make(chan struct{})
	s.mu.Lock()
	reason, drop := s.refuseLocked(false)
	if drop {
		s.mu.Unlock()
		s.dropped(reason, 0, 1)
		close(ch)
		return ch
	}
	s.enqueueLocked(Event{Type: EventShutdown})
	s.acks = append(s.acks, streamAck{n: s.seq, ch: ch})
	s.mu.Unlock()
	return ch
}

// ackLocked closes the acks of the events numbered up to n: their batch
// was answered (or given up on), and what the reply asked for was done.
func (s *Stream) ackLocked(n uint64) {
	kept := s.acks[:0]
	for _, a := range s.acks {
		if a.n <= n {
			close(a.ch)
		} else {
			kept = append(kept, a)
		}
	}
	clear(s.acks[len(kept):])
	s.acks = kept
}

// ackAllLocked closes every ack: nothing more will be delivered.
func (s *Stream) ackAllLocked() {
	for _, a := range s.acks {
		close(a.ch)
	}
	s.acks = nil
}
