package sidecar

import (
	"context"

	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/session"
)

// locateSessions tells the Redis broker where a connection lives that is
// not on the node its id names: a session restored on another node keeps
// its id (SPEC §10), and the store's record of it names the node that
// restored it. A held session (detached) is on no node. Only the misses of
// admin /send and /close ask (pubsub/redis_direct.go).
func locateSessions(b pubsub.Broker, sessions session.Store) {
	rb, ok := b.(*pubsub.Redis)
	if !ok || sessions == nil || !sessions.Durable() {
		return
	}
	rb.Locate(func(ctx context.Context, id string) (string, bool, error) {
		s, detached, err := sessions.Find(ctx, id)
		if err != nil || s == nil || detached {
			return "", false, err
		}
		return s.Node, true, nil
	})
}
