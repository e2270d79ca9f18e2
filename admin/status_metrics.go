package admin

import (
	"math"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// What the status page reads of the metrics registry: the very series
// /metrics serves, gathered the same way, so that the page and a scrape
// never disagree about a counter.

// reading is the series the page shows, as the registry had them at one
// moment.
type reading struct {
	at       time.Time
	conns    float64            // cablecar_connections
	accepted float64            // cablecar_upgrades_total{result="accepted"}
	refused  map[string]float64 // cablecar_upgrades_total{result="rejected"}, by reason
	msgsIn   float64            // cablecar_messages_total{direction="in"}
	msgsOut  float64            // {direction="out"}
	webhooks map[string]float64 // cablecar_webhooks_total, both kinds, by outcome
	byKind   map[string]float64 // cablecar_webhooks_total, by kind
	// buckets of cablecar_webhook_duration_seconds, both kinds added up:
	// cumulative counts by upper bound, the last one +Inf.
	buckets       []bucket
	retries       float64            // cablecar_webhook_retries_total
	inFlight      float64            // cablecar_webhooks_in_flight
	closesPending float64            // cablecar_close_events_pending
	closes        map[string]float64 // cablecar_closes_total, by "by"
	brokerUp      *float64           // cablecar_broker_connected; nil without Redis
	disconnects   float64            // cablecar_broker_disconnects_total
	outageSeconds float64            // cablecar_broker_outage_seconds_total
}

type bucket struct {
	le    float64
	count float64
}

// failedOutcomes are the webhook outcomes that are Cablecar's failures to
// get an answer it could use, as opposed to the app's answers (rejected,
// gone).
var failedOutcomes = []string{"failed", "timeout", "unreachable", "invalid"}

func (r *reading) failures() float64 {
	var n float64
	for _, o := range failedOutcomes {
		n += r.webhooks[o]
	}
	return n
}

func sum(m map[string]float64) float64 {
	var n float64
	for _, v := range m {
		n += v
	}
	return n
}

// read gathers g and keeps what the page shows.
func read(g prometheus.Gatherer, at time.Time) (*reading, error) {
	mfs, err := g.Gather()
	r := &reading{at: at, refused: map[string]float64{}, webhooks: map[string]float64{},
		byKind: map[string]float64{}, closes: map[string]float64{}}
	if err != nil && len(mfs) == 0 {
		return nil, err
	}
	// Gather reports a collector's failure but still returns the others:
	// what the page needs is all ours, and /metrics serves the same.
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			r.add(mf.GetName(), m)
		}
	}
	return r, nil
}

func (r *reading) add(name string, m *dto.Metric) {
	v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
	switch name {
	case "cablecar_connections":
		r.conns = v
	case "cablecar_upgrades_total":
		if label(m, "result") == "accepted" {
			r.accepted += v
		} else {
			r.refused[label(m, "reason")] += v
		}
	case "cablecar_messages_total":
		if label(m, "direction") == "in" {
			r.msgsIn = v
		} else {
			r.msgsOut = v
		}
	case "cablecar_webhooks_total":
		r.webhooks[label(m, "outcome")] += v
		r.byKind[label(m, "kind")] += v
	case "cablecar_webhook_duration_seconds":
		r.addHistogram(m.GetHistogram())
	case "cablecar_webhook_retries_total":
		r.retries = v
	case "cablecar_webhooks_in_flight":
		r.inFlight = v
	case "cablecar_close_events_pending":
		r.closesPending = v
	case "cablecar_closes_total":
		r.closes[label(m, "by")] += v
	case "cablecar_broker_connected":
		r.brokerUp = &v
	case "cablecar_broker_disconnects_total":
		r.disconnects = v
	case "cablecar_broker_outage_seconds_total":
		r.outageSeconds = v
	}
}

// addHistogram adds h's buckets to r's; every kind has the same bounds.
func (r *reading) addHistogram(h *dto.Histogram) {
	bs := h.GetBucket()
	if r.buckets == nil {
		r.buckets = make([]bucket, len(bs)+1)
		for i, b := range bs {
			r.buckets[i].le = b.GetUpperBound()
		}
		r.buckets[len(bs)].le = math.Inf(1)
	}
	if len(bs)+1 != len(r.buckets) {
		return // not ours to make sense of
	}
	for i, b := range bs {
		r.buckets[i].count += float64(b.GetCumulativeCount())
	}
	r.buckets[len(bs)].count += float64(h.GetSampleCount())
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// quantileMS is the q-quantile, in milliseconds, of the webhook durations
// observed between old and now, from the histogram's buckets as
// Prometheus' histogram_quantile estimates it (linear within a bucket; the
// largest finite bound for what fell beyond it); nil when none was
// observed.
func quantileMS(old, now *reading, q float64) *float64 {
	if len(now.buckets) == 0 || (len(old.buckets) != len(now.buckets) && len(old.buckets) != 0) {
		return nil
	}
	// Before the first observation the histogram has no series: all zero.
	before := func(i int) float64 {
		if len(old.buckets) == 0 {
			return 0
		}
		return old.buckets[i].count
	}
	n := len(now.buckets)
	total := now.buckets[n-1].count - before(n-1)
	if total <= 0 {
		return nil
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for i, b := range now.buckets {
		cum := b.count - before(i)
		if cum >= rank {
			if math.IsInf(b.le, 1) {
				ms := lower * 1000
				return &ms
			}
			in := cum - below
			v := b.le
			if in > 0 {
				v = lower + (b.le-lower)*(rank-below)/in
			}
			ms := math.Round(v*1000*100) / 100
			return &ms
		}
		lower, below = b.le, cum
	}
	return nil
}

// perSecond is (now - old) per second between the two readings, rounded
// to hundredths; 0 when they are the same moment.
func perSecond(old, now float64, d time.Duration) float64 {
	if d <= 0 || now < old { // a counter never goes back: a restart of it is no rate
		return 0
	}
	return math.Round((now-old)/d.Seconds()*100) / 100
}

// byRate lists m's keys with their totals and their rates since old's,
// largest total first.
func byRate(old, now map[string]float64, d time.Duration) []Count {
	out := make([]Count, 0, len(now))
	for k, v := range now {
		if v == 0 {
			continue // a series made ahead, so that scrapes see zeros
		}
		out = append(out, Count{Name: k, Total: v, PerSecond: perSecond(old[k], v, d)})
	}
	slices.SortFunc(out, func(a, b Count) int {
		if a.Total != b.Total {
			if a.Total > b.Total {
				return -1
			}
			return 1
		}
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	return out
}
