package pubsub

import (
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The Redis broker's metrics, resolved once, and its reconnection backoff.

// backoff is the wait before the n-th reconnection attempt in a row.
func backoff(n int) time.Duration {
	d := 50 * time.Millisecond << min(n, 6)
	d = min(d, 2*time.Second)
	return d/2 + rand.N(d/2+1)
}

type redisMetrics struct {
	connected     prometheus.Gauge
	disconnects   prometheus.Counter
	outageSeconds prometheus.Counter
	decodeErrors  prometheus.Counter
	// Per message, so resolved once.
	receivedVerbatim, receivedEnvelope, receivedCommand prometheus.Counter
}

func newRedisMetrics(reg prometheus.Registerer) *redisMetrics {
	m := &redisMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cablecar_broker_connected",
			Help: "1 while the Redis subscriber connection is up.",
		}),
		disconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_broker_disconnects_total",
			Help: "Times the Redis subscriber connection was lost.",
		}),
		outageSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_broker_outage_seconds_total",
			Help: "Time without a Redis subscriber connection: broadcasts published meanwhile did not reach this node.",
		}),
		decodeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_broker_decode_errors_total",
			Help: "Messages on internal channels that could not be decoded (dropped).",
		}),
	}
	received := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_broker_received_total",
		Help: "Messages received from Redis, by kind (verbatim, envelope, command).",
	}, []string{"kind"})
	m.receivedVerbatim = received.WithLabelValues("verbatim")
	m.receivedEnvelope = received.WithLabelValues("envelope")
	m.receivedCommand = received.WithLabelValues("command")
	reg.MustRegister(m.connected, m.disconnects, m.outageSeconds, received, m.decodeErrors)
	return m
}
