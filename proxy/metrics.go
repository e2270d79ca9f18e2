package proxy

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests       [6]prometheus.Counter  // by status class, index 1..5; 0 for anything else
	durations      [6]prometheus.Observer // same index
	upstreamErrors *prometheus.CounterVec
	dials          prometheus.Counter
	clientLimits   [2]prometheus.Counter // by limit, indexed by limitBodyTimeout, limitTooManyConns
}

// The client limits of SPEC §5 "Slow uploads", as clientLimits indexes.
const (
	limitBodyTimeout = iota
	limitTooManyConns
)

func newMetrics(reg prometheus.Registerer) *metrics {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_proxy_requests_total",
		Help: "Plain HTTP requests answered, by status class (1xx…5xx).",
	}, []string{"code"})
	durations := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cablecar_proxy_request_duration_seconds",
		Help: "Time from a request's arrival until its response headers were ready, by status class. Streamed bodies are not included.",
		// 0.5 ms … ~65 s: a sidecar's own overhead is sub-millisecond, an app's answer can take a minute.
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
	}, []string{"code"})
	m := &metrics{
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cablecar_proxy_upstream_errors_total",
			Help: "Requests the app did not answer, by reason (unreachable, timeout, busy, bad_response, bad_request).",
		}, []string{"reason"}),
		dials: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_proxy_upstream_dials_total",
			Help: "Connections opened to the app; far fewer than requests while keep-alive pooling works.",
		}),
	}
	limits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_proxy_client_limits_total",
		Help: "Requests cut or refused so that no client can hold the app's connections: body_timeout (the body sent nothing for proxy.client_body_timeout; 408), too_many_conns (the client address held proxy.max_conns_per_client app connections; 503).",
	}, []string{"limit"})
	m.clientLimits[limitBodyTimeout] = limits.WithLabelValues("body_timeout")
	m.clientLimits[limitTooManyConns] = limits.WithLabelValues("too_many_conns")
	for i := range m.requests {
		code := "other"
		if i > 0 {
			code = strconv.Itoa(i) + "xx"
		}
		m.requests[i] = requests.WithLabelValues(code)
		m.durations[i] = durations.WithLabelValues(code)
	}
	for _, r := range []string{"unreachable", "timeout", "busy", "bad_response", "bad_request"} {
		m.upstreamErrors.WithLabelValues(r)
	}
	reg.MustRegister(requests, durations, m.upstreamErrors, m.dials, limits)
	return m
}

func (m *metrics) observe(status int, d time.Duration) {
	class := status / 100
	if class < 1 || class > 5 {
		class = 0
	}
	m.requests[class].Inc()
	m.durations[class].Observe(d.Seconds())
}
