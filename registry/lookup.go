package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/cablecar/cablecar/pubsub"
)

// Lookup reads the record of connection id from Redis, where the node its
// id names keeps it (the admin API's GET /connections/<id> for another
// node's connection). It finds a record only while that node's lease
// lives: a node whose lease lapsed has given its connections up, or died
// with them. The registry holds every connection from its accept until it
// ended (and, when the app wants close events, until that event was
// delivered: such a record is marked Ended meanwhile); false means no
// open connection, an error that Redis could not be asked.
func (r *Registry) Lookup(ctx context.Context, id string) (ConnRecord, bool, error) {
	node, ok := pubsub.NodeOf(id)
	if !ok {
		return ConnRecord{}, false, nil
	}
	k := keysOf(r.pfx, node)
	// Both keys share the node's hash tag, so one pipeline is one slot on
	// a cluster too.
	pipe := r.rdb.Pipeline()
	lease := pipe.Exists(ctx, k.lease)
	raw := pipe.HGet(ctx, k.conns, id)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return ConnRecord{}, false, fmt.Errorf("reading the connection record: %w", err)
	}
	if lease.Val() == 0 || errors.Is(raw.Err(), redis.Nil) {
		return ConnRecord{}, false, nil
	}
	rec, err := decodeRecord(id, []byte(raw.Val()))
	if err != nil {
		return ConnRecord{}, false, fmt.Errorf("reading the connection record: %w", err)
	}
	if rec.Ended {
		return ConnRecord{}, false, nil
	}
	return rec, true, nil
}
