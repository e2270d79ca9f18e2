package registry

import (
	"context"
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"
)

// NodeInfo is what Redis says of one node.
type NodeInfo struct {
	ID string `json:"id"`
	// Alive: its lease is held. A node listed without one has stopped
	// refreshing it: lost, with its close events posted (or being posted)
	// by a survivor.
	Alive bool `json:"alive"`
	// Connections is how many connection records the node keeps: its open
	// connections, and those whose close event is still on its way to the
	// app.
	Connections int64 `json:"connections"`
}

// Nodes lists the nodes Redis knows of, this one included, sorted by id:
// the status page's view of the cluster. It costs two round trips: the
// list, then one pipeline of EXISTS and HLEN (on a cluster, one per slot
// that holds a node's keys).
func (r *Registry) Nodes(ctx context.Context) ([]NodeInfo, error) {
	ids, err := r.rdb.SMembers(ctx, r.nodes).Result()
	if err != nil {
		return nil, fmt.Errorf("listing the nodes: %w", err)
	}
	slices.Sort(ids)
	pipe := r.rdb.Pipeline()
	leases := make([]*redis.IntCmd, len(ids))
	conns := make([]*redis.IntCmd, len(ids))
	for i, id := range ids {
		k := keysOf(r.pfx, id)
		leases[i] = pipe.Exists(ctx, k.lease)
		conns[i] = pipe.HLen(ctx, k.conns)
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("reading the nodes' leases: %w", err)
		}
	}
	out := make([]NodeInfo, len(ids))
	for i, id := range ids {
		out[i] = NodeInfo{ID: id, Alive: leases[i].Val() == 1, Connections: conns[i].Val()}
	}
	return out, nil
}
