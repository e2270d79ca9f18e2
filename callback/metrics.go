package callback

import "github.com/prometheus/client_golang/prometheus"

type kind int

const (
	kindAccept kind = iota
	kindEvents
	numKinds
)

var kindNames = [numKinds]string{"accept", "events"}

// outcome is what became of one request to the app.
type outcome int

const (
	outcomeOK          outcome = iota // 2xx with a usable reply
	outcomeInvalid                    // 2xx with a reply that could not be used
	outcomeRejected                   // 3xx/4xx (other than 410 for events)
	outcomeGone                       // 410 to events
	outcomeFailed                     // 5xx, 429, or the connection broke
	outcomeTimeout                    // no answer within Timeout
	outcomeUnreachable                // dial failed, or no connection free
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"ok", "invalid", "rejected", "gone", "failed", "timeout", "unreachable"}

// dropReason says why events never reached the app.
type dropReason int

const (
	dropRejected   dropReason = iota // the app answered 3xx/4xx
	dropGone                         // the app answered 410 for the connection
	dropUpstream                     // retries ran out
	dropClosed                       // pushed after the close event (or End)
	dropShutdown                     // Wait's ctx ended
	dropRetryLimit                   // a close event retried for CloseRetryFor
	dropOverflow                     // a waiting close event pushed out past MaxPendingCloses
	numDropReasons
)

var dropNames = [numDropReasons]string{"rejected", "gone", "upstream", "closed", "shutdown", "retry_limit", "overflow"}

// metrics are resolved once, so that counting costs no label lookups.
type metrics struct {
	webhooks       [numKinds][numOutcomes]prometheus.Counter
	duration       [numKinds]prometheus.Observer
	retries        prometheus.Counter
	inFlight       prometheus.Gauge
	events         prometheus.Counter
	closeDropped   prometheus.Counter
	closeAbandoned prometheus.Counter
	closesPending  prometheus.Gauge
	dropped        [numDropReasons]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	webhooks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_webhooks_total",
		Help: "Requests to the app, each attempt counted once, by kind (accept, events) and outcome " +
			"(ok, invalid: 2xx with an unusable reply, rejected: 3xx/4xx, gone: 410, failed: 5xx/429/broken connection, timeout, unreachable).",
	}, []string{"kind", "outcome"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cablecar_webhook_duration_seconds",
		Help: "Time of one request to the app, from sending to the reply body read, by kind.",
		// 1 ms … ~65 s.
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 17),
	}, []string{"kind"})
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_events_dropped_total",
		Help: "Events never delivered to the app, by reason (rejected, gone, upstream: retries ran out, " +
			"closed: pushed after the close event, shutdown, retry_limit: a close event retried for callback.close_retry_for, " +
			"overflow: a waiting close event pushed out by callback.max_pending_closes newer ones).",
	}, []string{"reason"})
	m := &metrics{
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_webhook_retries_total",
			Help: "Event requests sent again after a failed attempt.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cablecar_webhooks_in_flight",
			Help: "Event requests waiting for the app's answer; at most callback.max_in_flight.",
		}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_webhook_events_total",
			Help: "Events delivered to the app (answered 2xx).",
		}),
		closeDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_close_events_dropped_total",
			Help: "Close events never delivered to the app (rejected, retried for callback.close_retry_for, " +
				"or pushed out past callback.max_pending_closes): the app's presence counts may be wrong.",
		}),
		closeAbandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_close_events_abandoned_total",
			Help: "Close events still undelivered when shutdown_timeout ran out. With Redis they stay in the " +
				"node's record and a surviving node posts them; with the in-memory broker they are lost.",
		}),
		closesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cablecar_close_events_pending",
			Help: "Close events waiting to be sent again to a failing app; at most callback.max_pending_closes waiting.",
		}),
	}
	for k := range numKinds {
		m.duration[k] = duration.WithLabelValues(kindNames[k])
		for o := range numOutcomes {
			m.webhooks[k][o] = webhooks.WithLabelValues(kindNames[k], outcomeNames[o])
		}
	}
	for r := range numDropReasons {
		m.dropped[r] = dropped.WithLabelValues(dropNames[r])
	}
	reg.MustRegister(webhooks, duration, dropped, m.retries, m.inFlight, m.events, m.closeDropped, m.closeAbandoned, m.closesPending)
	return m
}
