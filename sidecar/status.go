package sidecar

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cablecar/cablecar/admin"
	"github.com/cablecar/cablecar/config"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
	"github.com/cablecar/cablecar/upgrade"
)

// statusSources is what the admin listener's status page reads: the
// registry of Cablecar's own series, and each other fact from the part
// that owns it. inner is the broker before metering; records is nil with
// the in-memory broker.
func statusSources(cfg *config.Config, node string, metrics prometheus.Gatherer, hub *upgrade.Hub, inner pubsub.Broker,
	records *registry.Registry, pres *presenceParts) admin.StatusSources {
	src := admin.StatusSources{
		Metrics:     metrics,
		Node:        node,
		Version:     Version,
		MaxInFlight: cfg.Callback.MaxInFlight,
		Broker:      "memory",
		BrokerReady: inner.Ready,
		Channels: func(n int) ([]admin.ChannelCount, int) {
			top, total := hub.TopChannels(n)
			out := make([]admin.ChannelCount, len(top))
			for i, c := range top {
				out[i] = admin.ChannelCount{Name: c.Name, Subscribers: c.Subscribers}
			}
			return out, total
		},
	}
	if pres != nil {
		src.Presence = pres.counts
	}
	if rb, ok := inner.(*pubsub.Redis); ok {
		src.Broker = "redis"
		src.DownSince = rb.DownSince
	}
	if records != nil {
		src.Nodes = func(ctx context.Context) ([]admin.NodeStatus, error) {
			nodes, err := records.Nodes(ctx)
			out := make([]admin.NodeStatus, len(nodes))
			for i, n := range nodes {
				out[i] = admin.NodeStatus{ID: n.ID, Alive: n.Alive, Connections: n.Connections}
			}
			return out, err
		}
	}
	return src
}
