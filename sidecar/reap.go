package sidecar

import (
	"errors"

	"github.com/fasthttp/websocket"

	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/registry"
	"github.com/cablecar/cablecar/upgrade"
)

// The registry finds lost nodes and keeps their records until their close
// events settle; the callback client posts close events. postLost is the
// one place that joins them, so that neither package knows the other's
// insides: the registry knows only a PostFunc, the callback client only a
// record and a stop channel.

// lostClose is the close event of a connection whose node was lost
// (SPEC §3): code 1006, by node_lost.
var lostClose = callback.Event{Type: callback.EventClose, Code: websocket.CloseAbnormalClosure, Reason: "node lost", By: upgrade.ByNodeLost}

// postLost is the registry's PostFunc: it queues a lost connection's
// close event in the callback client's close queue and returns at once,
// so that an app that is down holds no reap round. False when the queue
// is full (or shutdown gave up): the record waits in Redis and is offered
// again. A record that can never be posted is settled at once, so that it
// is deleted rather than offered for ever.
func (s *Sidecar) postLost(node string, rec registry.ConnRecord, stop <-chan struct{}, settled func()) bool {
	if done, err := s.holdLost(node, rec); err != nil {
		// Offered again on the next round.
		s.log.Warn().Err(err).Str("lost_node", node).Msg("a lost connection's session could not be looked at; retrying")
		return false
	} else if done {
		// Its close waits for a restore (session.go), or its session goes on elsewhere.
		settled()
		return true
	}
	if rec.NoClose {
		// Recorded only to be found; the app wants no close event of it.
		settled()
		return true
	}
	err := s.cb.PostLost(rec, lostClose, stop, settled)
	switch {
	case err == nil:
		return true
	case errors.Is(err, callback.ErrClosesFull), errors.Is(err, callback.ErrShutdown):
		return false
	default:
		s.log.Error().Err(err).Str("lost_node", node).Str("conn_id", rec.ID).Msg("a lost connection's close event cannot be posted; its record is deleted")
		settled()
		return true
	}
}
