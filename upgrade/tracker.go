package upgrade

import (
	"context"

	"github.com/cablecar/cablecar/registry"
)

// Tracker keeps a record of this node's live connections where other
// nodes can find it, so that their close events outlive this node
// (registry.Registry, with Redis). Its methods never block on the network:
// writes are batched. A nil Tracker (one node, in memory) records nothing.
type Tracker interface {
	// Track records a connection (NoClose when the app wants no close
	// event: then only to be found by other nodes).
	Track(rec registry.ConnRecord)
	// Update records a change of state or channels.
	Update(id, state string, channels []string)
	// Untrack forgets a connection: at its end when the app wants no close
	// event, else once that event was delivered.
	Untrack(id string)
	// Written returns once every change made before the call is where
	// other nodes find it, or with ctx's error.
	Written(ctx context.Context) error
}

var _ Tracker = (*registry.Registry)(nil)
