package callback

import (
	"fmt"

	"github.com/cablecar/cablecar/registry"
)

// Session restore (SPEC §10): a restored connection numbers its events
// where its session stopped, and a session that lapsed posts the close
// event its connection held back.

// Seq is the number of the last event handed out.
func (s *Stream) Seq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// Resume makes the numbering go on after n. Call it before the first Push.
func (s *Stream) Resume(n uint64) {
	s.mu.Lock()
	s.seq = n
	s.mu.Unlock()
}

// OnEvery calls f each time the numbering reaches a multiple of every,
// under the stream's lock: f must not block. Call it before the first Push.
func (s *Stream) OnEvery(every uint64, f func(n uint64)) {
	s.mu.Lock()
	s.every, s.onEvery = every, f
	s.mu.Unlock()
}

// PostHeld posts the close event a connection of this node held back
// while its session waited to be restored (rec.Close, with its own
// number), as PostLost posts a lost one, but counted by Wait: shutdown
// waits for it, for no other node will post it.
func (c *Client) PostHeld(rec registry.ConnRecord, settled func()) error {
	hc := rec.Close
	if hc == nil || hc.N == 0 || rec.ID == "" || rec.Path == "" {
		return fmt.Errorf("callback: held close without an event, id or path (id %q)", rec.ID)
	}
	ev := Event{Code: hc.Code, Reason: hc.Reason, By: hc.By}
	if rec.ActionCable {
		ev.Identifiers = append([]string{}, rec.Identifiers...)
	}
	info := ConnInfo{ID: rec.ID, State: rec.State, Channels: rec.Channels, Claims: rec.Claims}
	s := c.NewStream(lostTarget{info: info, pub: c.pub, log: c.log, timeout: c.cfg.Timeout}, rec.ID, rec.Path, rec.Headers)
	s.Resume(hc.N - 1)
	s.PushClose(ev, settled)
	return nil
}
