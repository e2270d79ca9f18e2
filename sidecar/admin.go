package sidecar

import (
	"context"

	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/admin"
	"github.com/cablecar/cablecar/config"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
	"github.com/cablecar/cablecar/upgrade"
)

// connLookup answers the admin API's GET /connections/<id>: this node's
// own connections from its hub, another node's from the records it keeps
// in Redis (records is nil with the in-memory broker, where every
// connection is this node's).
func connLookup(node string, hub *upgrade.Hub, records *registry.Registry, sessions admin.Lookup) admin.Lookup {
	return func(ctx context.Context, id string) (admin.Connection, bool, error) {
		owner, ok := pubsub.NodeOf(id)
		if !ok {
			return admin.Connection{}, false, nil
		}
		// A restored session's connection may be here under an id that
		// names another node (SPEC §10).
		if channels, ok := hub.Lookup(id); ok {
			return admin.Connection{ID: id, Node: node, Channels: channels}, true, nil
		}
		if owner != node && records != nil {
			rec, ok, err := records.Lookup(ctx, id)
			if err != nil {
				return admin.Connection{}, false, err
			}
			if ok {
				return admin.Connection{ID: id, Node: owner, Channels: rec.Channels}, true, nil
			}
		}
		// Waiting to be restored, or restored on yet another node.
		return sessions(ctx, id)
	}
}

// warnUnsigned says so at start-up when callbacks go out unsigned: the app
// then cannot tell Cablecar's accept and event requests (and the claims
// they carry) from anyone else's.
func warnUnsigned(cfg *config.Config, log zerolog.Logger) {
	if len(cfg.Callback.Secret) == 0 {
		log.Warn().Str("section", "callback").Msg("callbacks are unsigned; set callback.secret (CABLECAR_CALLBACK_SECRET) " +
			"and check Cablecar-Signature in the app, so that it can tell Cablecar's requests from anyone else's")
	}
}
