package admin

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The status page (SPEC §4: GET / is a status page for people): one HTML
// file, embedded, that polls GET /status.json every second. The page
// holds no data, so it is served to anyone the guard lets through; the
// JSON is behind the API's key. With a key set, the page asks for it when
// the JSON answers 401, keeps it in sessionStorage and sends it as
// Authorization, never in a URL. Everything else the admin listener
// refuses (guard.go) it refuses here too: both routes sit behind
// Server.ServeHTTP.

//go:embed status.html
var statusHTML []byte

// statusCSP lets the page run its own inline script and style, and
// nothing else: no other script, no frame around it, no form sent
// anywhere (the key is read by the script, never submitted), requests
// to this origin only.
var statusCSP = func() string {
	hashes := func(tag string) string {
		re := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`)
		var out []string
		for _, m := range re.FindAllSubmatch(statusHTML, -1) {
			sum := sha256.Sum256(m[1])
			out = append(out, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
		}
		return strings.Join(out, " ")
	}
	return "default-src 'none'; script-src " + hashes("script") + "; style-src " + hashes("style") +
		"; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'"
}()

// topChannels is how many of the busiest channels the page lists.
const topChannels = 10

// slowEvery is how long the parts of a snapshot that cost in proportion
// to the node's size (every channel; a round trip to Redis) are reused,
// so that several people watching cost what one does.
const slowEvery = time.Second

// StatusSources is what the status page reads besides the metrics
// registry. Every func may be nil, as said.
type StatusSources struct {
	// Metrics is the registry of Cablecar's own series, read once a
	// second; nil: the listener's whole gatherer (with the Go and process
	// collectors, whose reading of /proc costs ten times the rest).
	Metrics       prometheus.Gatherer
	Node, Version string
	MaxInFlight   int    // callback.max_in_flight: the cap of webhooks in flight
	Broker        string // "memory" or "redis"
	// BrokerReady is nil while the broker can carry messages (the
	// /readyz check); nil means it always can.
	BrokerReady Check
	// DownSince is when the current broker outage began, zero while
	// there is none; nil for a broker that has none (in memory).
	DownSince func() time.Time
	// Channels is the n channels with the most subscribers on this node
	// and how many have any.
	Channels func(n int) (top []ChannelCount, total int)
	// Nodes lists the nodes Redis knows of; nil without Redis (this node
	// is then the only one).
	Nodes func(ctx context.Context) ([]NodeStatus, error)
	// Presence is the presence counts (SPEC §11): the n channels with the
	// most present ids; nil (or an empty answer) shows that presence is
	// not in use.
	Presence func(n int) []PresenceCount
}

// ChannelCount is a channel with its subscribers on this node.
type ChannelCount struct {
	Name        string `json:"name"`
	Subscribers int    `json:"subscribers"`
}

// NodeStatus is a node as Redis knows it.
type NodeStatus struct {
	ID          string `json:"id"`
	Self        bool   `json:"self"`  // the node answering
	Alive       bool   `json:"alive"` // its lease is held
	Connections int64  `json:"connections"`
}

// PresenceCount is how many are present on a channel.
type PresenceCount struct {
	Channel string `json:"channel"`
	Present int    `json:"present"`
}

// Status is what GET /status.json answers: totals exactly as /metrics has
// them at the moment of the request, and rates per second over the last
// WindowSeconds.
type Status struct {
	Node          string          `json:"node"`
	Version       string          `json:"version"`
	Time          int64           `json:"time"`           // unix milliseconds
	WindowSeconds float64         `json:"window_seconds"` // 0 until a second reading exists: rates are 0
	Broker        BrokerStatus    `json:"broker"`
	Connections   float64         `json:"connections"` // open on this node
	Accepts       Rate            `json:"accepts"`
	Refusals      RateBy          `json:"refusals"` // handshakes refused, by reason
	MessagesIn    Rate            `json:"messages_in"`
	MessagesOut   Rate            `json:"messages_out"`
	Webhooks      WebhookStatus   `json:"webhooks"`
	Closes        []Count         `json:"closes"` // by who or what closed (SPEC §3 "by")
	Channels      ChannelsStatus  `json:"channels"`
	Nodes         []NodeStatus    `json:"nodes"`
	NodesError    string          `json:"nodes_error,omitempty"`
	Presence      []PresenceCount `json:"presence"` // empty: not in use
	History       History         `json:"history"`
}

// Rate is a counter's total and its rate per second.
type Rate struct {
	Total     float64 `json:"total"`
	PerSecond float64 `json:"per_second"`
}

// RateBy is a rate with its parts.
type RateBy struct {
	Rate
	ByReason []Count `json:"by_reason"`
}

// Count is one labelled series of a counter, largest total first.
type Count struct {
	Name      string  `json:"name"`
	Total     float64 `json:"total"`
	PerSecond float64 `json:"per_second"`
}

// WebhookStatus is the requests to the app.
type WebhookStatus struct {
	Rate                   // every attempt, accept and events
	P50MS         *float64 `json:"p50_ms"` // over the window; null when there was none
	P99MS         *float64 `json:"p99_ms"`
	Retries       Rate     `json:"retries"`
	Failures      Rate     `json:"failures"` // failed, timeout, unreachable, invalid
	Outcomes      []Count  `json:"outcomes"`
	ByKind        []Count  `json:"by_kind"`
	InFlight      float64  `json:"in_flight"`
	MaxInFlight   int      `json:"max_in_flight"`
	ClosesPending float64  `json:"closes_pending"` // close events waiting for a failing app
}

// BrokerStatus is the broker's state.
type BrokerStatus struct {
	Kind  string `json:"kind"` // memory or redis
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// OutageSeconds is how long the current outage has lasted; 0 while
	// connected.
	OutageSeconds      float64 `json:"outage_seconds"`
	Disconnects        float64 `json:"disconnects"`          // cablecar_broker_disconnects_total
	OutageSecondsTotal float64 `json:"outage_seconds_total"` // of the outages that are over
}

// ChannelsStatus is this node's channels.
type ChannelsStatus struct {
	Total int            `json:"total"` // with a subscriber on this node
	Top   []ChannelCount `json:"top"`
}

type statusPage struct {
	src     StatusSources
	g       prometheus.Gatherer
	sampler *sampler

	slowMu sync.Mutex
	slowAt time.Time
	slow   slowParts
}

// slowParts are the parts of a snapshot reused for slowEvery.
type slowParts struct {
	top        []ChannelCount
	channels   int
	nodes      []NodeStatus
	nodesErr   string
	brokerErr  string
	hasNodesFn bool
	presence   []PresenceCount // nil: not in use
}

// EnableStatus serves the status page at GET / and its data at GET
// /status.json (with the API's key, when one is set), and samples the
// metrics once a second while the listener serves. Call it before Serve.
func (s *Server) EnableStatus(src StatusSources) {
	g := src.Metrics
	if g == nil {
		g = s.gatherer
	}
	p := &statusPage{src: src, g: g, sampler: &sampler{g: g, log: s.log}}
	s.status = p
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", statusCSP)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		w.Write(statusHTML)
	})
	data := func(ctx context.Context, _ *http.Request) (any, error) { return p.snapshot(ctx, time.Now()) }
	s.mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		// The API's key as it is when asked, whichever of EnableAPI and
		// EnableStatus came first: the data is never less guarded than
		// the API.
		a := s.api
		if a == nil {
			a = &api{}
		}
		a.get(data).ServeHTTP(w, r)
	})
}

// snapshot is the status as of now.
func (p *statusPage) snapshot(ctx context.Context, now time.Time) (*Status, error) {
	cur, err := read(p.g, now)
	if err != nil {
		return nil, err
	}
	old := p.sampler.oldest()
	if old == nil || !old.at.Before(now) {
		old = cur
	}
	d := cur.at.Sub(old.at)
	st := &Status{
		Node:          p.src.Node,
		Version:       p.src.Version,
		Time:          now.UnixMilli(),
		WindowSeconds: d.Round(time.Millisecond).Seconds(),
		Connections:   cur.conns,
		Accepts:       Rate{cur.accepted, perSecond(old.accepted, cur.accepted, d)},
		Refusals: RateBy{Rate{sum(cur.refused), perSecond(sum(old.refused), sum(cur.refused), d)},
			byRate(old.refused, cur.refused, d)},
		MessagesIn:  Rate{cur.msgsIn, perSecond(old.msgsIn, cur.msgsIn, d)},
		MessagesOut: Rate{cur.msgsOut, perSecond(old.msgsOut, cur.msgsOut, d)},
		Webhooks: WebhookStatus{
			Rate:          Rate{sum(cur.webhooks), perSecond(sum(old.webhooks), sum(cur.webhooks), d)},
			P50MS:         quantileMS(old, cur, 0.5),
			P99MS:         quantileMS(old, cur, 0.99),
			Retries:       Rate{cur.retries, perSecond(old.retries, cur.retries, d)},
			Failures:      Rate{cur.failures(), perSecond(old.failures(), cur.failures(), d)},
			Outcomes:      byRate(old.webhooks, cur.webhooks, d),
			ByKind:        byRate(old.byKind, cur.byKind, d),
			InFlight:      cur.inFlight,
			MaxInFlight:   p.src.MaxInFlight,
			ClosesPending: cur.closesPending,
		},
		Closes:   byRate(old.closes, cur.closes, d),
		Presence: []PresenceCount{},
		History:  p.sampler.history(),
	}
	slow := p.slowParts(ctx, now)
	st.Channels = ChannelsStatus{Total: slow.channels, Top: slow.top}
	if st.Channels.Top == nil {
		st.Channels.Top = []ChannelCount{}
	}
	st.Nodes, st.NodesError = slow.nodes, slow.nodesErr
	if !slow.hasNodesFn {
		st.Nodes = []NodeStatus{{ID: p.src.Node, Self: true, Alive: true, Connections: int64(cur.conns)}}
	}
	if st.Nodes == nil {
		st.Nodes = []NodeStatus{}
	}
	st.Broker = BrokerStatus{Kind: p.src.Broker, OK: slow.brokerErr == "", Error: slow.brokerErr,
		Disconnects: cur.disconnects, OutageSecondsTotal: cur.outageSeconds}
	if p.src.DownSince != nil {
		if since := p.src.DownSince(); !since.IsZero() {
			st.Broker.OK = false
			st.Broker.OutageSeconds = now.Sub(since).Round(time.Second).Seconds()
		}
	}
	if slow.presence != nil {
		st.Presence = slow.presence
	}
	return st, nil
}

// slowParts reads the channels, the nodes, the broker's health and presence, or
// returns what was read less than slowEvery ago.
func (p *statusPage) slowParts(ctx context.Context, now time.Time) slowParts {
	p.slowMu.Lock()
	defer p.slowMu.Unlock()
	if !p.slowAt.IsZero() && now.Sub(p.slowAt) < slowEvery && now.After(p.slowAt) {
		return p.slow
	}
	var sp slowParts
	if p.src.Channels != nil {
		sp.top, sp.channels = p.src.Channels(topChannels)
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	if p.src.Nodes != nil {
		sp.hasNodesFn = true
		nodes, err := p.src.Nodes(ctx)
		if err != nil {
			sp.nodesErr = oneLine(err.Error())
		}
		for i := range nodes {
			nodes[i].Self = nodes[i].ID == p.src.Node
		}
		sp.nodes = nodes
	}
	if p.src.BrokerReady != nil {
		if err := p.src.BrokerReady(ctx); err != nil {
			sp.brokerErr = oneLine(err.Error())
		}
	}
	if p.src.Presence != nil {
		// A store read per channel: once per slowEvery, however many watch.
		sp.presence = p.src.Presence(topChannels)
	}
	p.slow, p.slowAt = sp, now
	return sp
}
