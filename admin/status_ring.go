package admin

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

const (
	// historyLen is how many per-second points the charts have: 5 minutes.
	historyLen = 300
	// rateWindow is what the rates and latencies shown as numbers are
	// over: long enough to be readable, short enough to be "now".
	rateWindow = 10
)

// point is one second of the charts: what happened during it, per second,
// and the connections open at its end.
type point struct {
	t                                   int64 // unix seconds at its end
	conns, accepts, refusals            float64
	msgsIn, msgsOut, webhooks, failures float64
	p50, p99                            *float64
}

// sampler reads the registry once a second, for as long as the admin
// listener serves, and keeps the last 5 minutes as points for the charts
// and the last rateWindow seconds of readings for the rates. A reading
// gathers the registry of Cablecar's own series as a scrape would
// (BenchmarkStatusSample/Cablecar: about 150 µs of CPU and 48 KB of
// garbage, once a second, on a loaded 2-core machine; the Go and process
// collectors would make it 800 µs, so the sidecar leaves them out), cheap
// enough to run whether or not anyone watches: a page opened now shows
// the last 5 minutes at once.
type sampler struct {
	g   prometheus.Gatherer
	log zerolog.Logger

	mu     sync.Mutex
	points [historyLen]point
	next   int // where the next point goes
	filled int // points kept, up to historyLen
	recent [rateWindow + 1]*reading
	rnext  int
}

// run samples every second until stop is closed.
func (s *sampler) run(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	s.tick(time.Now())
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			s.tick(now)
		}
	}
}

// tick takes a reading and, from the one before, the point of the second
// that just ended.
func (s *sampler) tick(now time.Time) {
	r, err := read(s.g, now)
	if err != nil {
		s.log.Debug().Err(err).Msg("status page: gathering the metrics")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev := s.recent[(s.rnext+len(s.recent)-1)%len(s.recent)]; prev != nil {
		d := r.at.Sub(prev.at)
		s.points[s.next] = point{
			t:        r.at.Unix(),
			conns:    r.conns,
			accepts:  perSecond(prev.accepted, r.accepted, d),
			refusals: perSecond(sum(prev.refused), sum(r.refused), d),
			msgsIn:   perSecond(prev.msgsIn, r.msgsIn, d),
			msgsOut:  perSecond(prev.msgsOut, r.msgsOut, d),
			webhooks: perSecond(sum(prev.webhooks), sum(r.webhooks), d),
			failures: perSecond(prev.failures(), r.failures(), d),
			p50:      quantileMS(prev, r, 0.5),
			p99:      quantileMS(prev, r, 0.99),
		}
		s.next = (s.next + 1) % historyLen
		s.filled = min(s.filled+1, historyLen)
	}
	s.recent[s.rnext] = r
	s.rnext = (s.rnext + 1) % len(s.recent)
}

// oldest is the oldest reading of the last rateWindow seconds, or nil
// before the first.
func (s *sampler) oldest() *reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range len(s.recent) {
		if r := s.recent[(s.rnext+i)%len(s.recent)]; r != nil {
			return r
		}
	}
	return nil
}

// History is the last 5 minutes, one column per series, oldest first:
// each series' i-th value is of the second ending at T[i].
type History struct {
	IntervalSeconds int        `json:"interval_seconds"`
	T               []int64    `json:"t"` // unix seconds
	Connections     []float64  `json:"connections"`
	Accepts         []float64  `json:"accepts"`  // per second, as every series below
	Refusals        []float64  `json:"refusals"` // all reasons
	MessagesIn      []float64  `json:"messages_in"`
	MessagesOut     []float64  `json:"messages_out"`
	Webhooks        []float64  `json:"webhooks"` // requests to the app, each attempt
	Failures        []float64  `json:"failures"` // of those, failed, timed out, unreachable or unusable
	P50MS           []*float64 `json:"p50_ms"`   // null: no webhook that second
	P99MS           []*float64 `json:"p99_ms"`
}

func (s *sampler) history() History {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.filled
	h := History{IntervalSeconds: 1, T: make([]int64, n), Connections: make([]float64, n),
		Accepts: make([]float64, n), Refusals: make([]float64, n), MessagesIn: make([]float64, n),
		MessagesOut: make([]float64, n), Webhooks: make([]float64, n), Failures: make([]float64, n),
		P50MS: make([]*float64, n), P99MS: make([]*float64, n)}
	for i := range n {
		p := &s.points[(s.next-n+i+historyLen)%historyLen]
		h.T[i], h.Connections[i], h.Accepts[i], h.Refusals[i] = p.t, p.conns, p.accepts, p.refusals
		h.MessagesIn[i], h.MessagesOut[i], h.Webhooks[i], h.Failures[i] = p.msgsIn, p.msgsOut, p.webhooks, p.failures
		h.P50MS[i], h.P99MS[i] = p.p50, p.p99
	}
	return h
}
