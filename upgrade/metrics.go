package upgrade

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	open     prometheus.Gauge
	upgrades *prometheus.CounterVec // result, reason
	closes   *prometheus.CounterVec // by
	// Per message: the series are resolved once, not looked up by label
	// on every message.
	messagesIn, messagesOut prometheus.Counter
	bytesIn, bytesOut       prometheus.Counter
	queueDrops              prometheus.Counter
	pings                   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cablecar_connections",
			Help: "WebSocket connections open now.",
		}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cablecar_upgrades_total",
			Help: "WebSocket handshakes by result (accepted, rejected) and reason.",
		}, []string{"result", "reason"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cablecar_closes_total",
			Help: "WebSocket connections closed, by who or what closed them (SPEC §3 'by').",
		}, []string{"by"}),
		queueDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_send_queue_dropped_total",
			Help: "Messages dropped because a connection's send queue was full; the connection is closed as slow.",
		}),
		pings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_pings_total",
			Help: "Ping frames sent.",
		}),
	}
	messages := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_messages_total",
		Help: "WebSocket messages received from clients (in) and written to them (out).",
	}, []string{"direction"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_message_bytes_total",
		Help: "Payload bytes of WebSocket messages received (in) and written (out).",
	}, []string{"direction"})
	m.messagesIn, m.messagesOut = messages.WithLabelValues("in"), messages.WithLabelValues("out")
	m.bytesIn, m.bytesOut = bytes.WithLabelValues("in"), bytes.WithLabelValues("out")
	reg.MustRegister(m.open, m.upgrades, messages, bytes, m.closes, m.queueDrops, m.pings)
	// Pre-create the common series so dashboards see zeros, not gaps.
	m.upgrades.WithLabelValues("accepted", "app")
	return m
}
