// Package sidecar wires Cablecar's parts together from a config.Config and
// runs them: the front listener (plain HTTP through proxy, WebSocket
// handshakes handed to upgrade), the broker and the Redis registry of
// connections with its reaping of lost nodes, the admin listener, and the
// graceful shutdown that ties them together. main stays a few lines;
// everything here can be started from a test.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/admin"
	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/config"
	"github.com/cablecar/cablecar/proxy"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
	"github.com/cablecar/cablecar/session"
	"github.com/cablecar/cablecar/upgrade"
)

// Version is set at build time (-ldflags "-X …sidecar.Version=…").
var Version = "dev"

// Sidecar is one running Cablecar node.
type Sidecar struct {
	cfg    *config.Config
	log    zerolog.Logger
	proxy  *proxy.Proxy
	ws     *upgrade.Server
	cb     *callback.Client
	broker pubsub.Broker
	// registry is the record of this node's connections in Redis; nil
	// with the in-memory broker.
	registry   *registry.Registry
	jwt        *auth.Verifier // nil without auth.jwt keys
	stopReaper context.CancelFunc
	reaperDone chan struct{}
	front      *fasthttp.Server
	frontLn    net.Listener
	admin      *admin.Server
	adminLn    net.Listener // nil when admin.listen is ""
	// sessions keeps ActionCable ext sessions (session.go); nil when
	// restore is off.
	sessions     session.Store
	stopSessions context.CancelFunc
	sessionsDone chan struct{}
	presence     *presenceParts
}

// NewLogger builds the one logger every part gets. Format "auto" is console
// output for a person at a terminal, JSON for everything else.
func NewLogger(cfg config.Log, w *os.File) zerolog.Logger {
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		level = zerolog.InfoLevel // config validated it already
	}
	var out io.Writer = w
	if cfg.Format == "console" || (cfg.Format == "auto" && isatty.IsTerminal(w.Fd())) {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger()
}

// New builds every part and binds both listeners, so that a port already in
// use is reported before anything claims to be ready.
func New(cfg *config.Config, log zerolog.Logger) (*Sidecar, error) {
	// reg holds Cablecar's own series; /metrics serves them with the Go
	// and process collectors', which the status page, reading reg every
	// second, does without (reading /proc is most of a scrape's cost).
	reg := prometheus.NewRegistry()
	// The pass-through's series (a histogram per status class, most of
	// the series there are) are served too, but the page shows none of
	// them: gathering them every second was most of an idle node's
	// garbage.
	proxyReg := prometheus.NewRegistry()
	runtimeReg := prometheus.NewRegistry()
	runtimeReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cablecar_build_info", Help: "Always 1; the version is a label.",
		ConstLabels: prometheus.Labels{"version": Version},
	}, func() float64 { return 1 }))

	node := pubsub.NewNodeID()
	pc, err := partConfigs(cfg, node)
	if err != nil {
		return nil, err
	}

	jwt, err := auth.NewVerifier(pc.jwt, log, reg)
	if err != nil {
		return nil, fmt.Errorf("auth.jwt: %w", err)
	}

	p := proxy.New(pc.proxy, log, proxyReg)
	cb := callback.New(pc.callback, log, reg)
	ucfg := pc.upgrade
	ucfg.JWT = jwt

	var (
		inner   pubsub.Broker = pubsub.NewMemory().WithHistory(pc.redis.History)
		records *registry.Registry
		rdb     redis.UniversalClient
		rb      *pubsub.Redis
	)
	if cfg.Broker.URL != "" {
		rb, err = pubsub.NewRedis(pc.redis, log, reg)
		if err != nil {
			return nil, err
		}
		inner = rb
		rdb = rb.Client()
		records = registry.New(rdb, pc.registry, log, reg)
		ucfg.Tracker = records
		cb.OnCloseNumbered(records.End)
	}
	sessions := newSessions(cfg.ActionCable.SessionTTL, rdb, cfg.Broker.Prefix, node, log)
	ucfg.ActionCable.Sessions = sessions
	locateSessions(inner, sessions)
	broker := pubsub.Metered(inner, reg)
	cb.SetPublisher(broker) // replies to close events that had to wait
	ws := upgrade.New(ucfg, log, reg, cb, broker, p.PrepareHeaders)
	if err := broker.Start(context.Background(), ws.Hub()); err != nil {
		return nil, fmt.Errorf("starting the broker: %w", err)
	}
	if records != nil {
		records.OnLapse(ws.Hub().Fence)
	}
	pres := newPresence(pc.presence, pc.presenceRedis, rb, ws.Hub(), cb, log) // presence.go
	p.OnUpgrade = ws.ServeHTTP
	s := &Sidecar{
		cfg:      cfg,
		log:      log.With().Str("node", node).Logger(),
		proxy:    p,
		ws:       ws,
		cb:       cb,
		broker:   broker,
		registry: records,
		sessions: sessions,
		presence: pres,
		front:    proxy.NewServer(pc.proxy, p.ServeHTTP, log),
		admin:    admin.New(log, prometheus.Gatherers{reg, proxyReg, runtimeReg}),
	}
	s.admin.AddCheck("app", p.Ping)
	s.admin.AddSoftCheck("broker", broker.Ready)
	if jwt != nil && cfg.Auth.JWT.JWKSURL != "" {
		s.admin.AddCheck("jwks", jwt.Ready)
	}
	s.jwt = jwt
	s.admin.EnableAPI(broker, cfg.Admin.APIKey)
	s.admin.EnableLookup(connLookup(node, ws.Hub(), records, s.findSession))
	s.admin.EnableStatus(statusSources(cfg, node, reg, ws.Hub(), inner, records, pres))
	s.admin.EnablePresence(pres.read)

	if s.frontLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	if cfg.Admin.Listen != "" {
		if s.adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
			s.frontLn.Close()
			return nil, fmt.Errorf("admin.listen %s: %w", cfg.Admin.Listen, err)
		}
	}
	warnInactive(cfg, log)
	warnUnsigned(cfg, log)
	return s, nil
}

// warnInactive says so when settings that do nothing with the rest of the
// config have been changed from their defaults: a setting that silently
// does nothing is worse than a loud one.
func warnInactive(cfg *config.Config, log zerolog.Logger) {
	def := config.Default()
	if cfg.Broker.URL == "" && (cfg.Broker.Prefix != def.Broker.Prefix || cfg.Broker.LeaseTTL != def.Broker.LeaseTTL) {
		log.Warn().Str("section", "broker").Msg("broker.prefix and broker.lease_ttl apply to Redis only, and broker.url is empty")
	}
	if j := cfg.Auth.JWT; len(j.HMACSecret) == 0 && j.JWKSURL == "" && !reflect.DeepEqual(j, def.Auth.JWT) {
		log.Warn().Str("section", "auth.jwt").Msg("auth.jwt is configured but has neither hmac_secret nor jwks_url: tokens are not checked")
	}
}

// Run serves until ctx is cancelled, then shuts down gracefully: /readyz
// turns 503, the front listener stops accepting, in-flight requests finish,
// and whatever is still open when shutdown_timeout runs out is cut. It
// returns nil after a graceful shutdown, even a cut one.
func (s *Sidecar) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- s.front.Serve(s.frontLn) }()
	if s.adminLn != nil {
		go func() { errc <- s.admin.Serve(s.adminLn) }()
	}
	ev := s.log.Info().Str("listen", s.frontLn.Addr().String()).
		Str("upstream", s.cfg.Upstream.String()).Str("version", Version)
	if s.adminLn != nil {
		ev = ev.Str("admin", s.adminLn.Addr().String())
	}
	ev.Msg("cablecar ready")
	s.runSessions()
	s.presence.run()
	if s.registry != nil {
		rctx, stop := context.WithCancel(context.Background())
		s.stopReaper, s.reaperDone = stop, make(chan struct{})
		go func() {
			defer close(s.reaperDone)
			s.registry.Run(rctx, s.postLost)
		}()
	}

	select {
	case err := <-errc:
		// A listener failed on its own: nothing to drain gracefully.
		s.proxy.Close()
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	return s.shutdown()
}

// handOverTime is what shutdown keeps, out of shutdown_timeout, to leave
// the close events it could not deliver in Redis for another node.
func handOverTime(timeout time.Duration) time.Duration { return min(timeout/5, 2*time.Second) }

func (s *Sidecar) shutdown() error {
	start := time.Now()
	s.log.Info().Dur("timeout_ms", s.cfg.ShutdownTimeout).Msg("shutting down: not ready, no new connections, closing WebSockets, finishing in-flight requests")
	s.admin.Drain()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()

	// WebSockets and plain HTTP drain side by side: the close handshakes
	// and close webhooks need not wait for a slow download, nor it for them.
	wsDone := make(chan struct{})
	go func() {
		defer close(wsDone)
		if err := s.ws.Shutdown(ctx); err != nil {
			s.log.Warn().Int("open", s.ws.Hub().Count()).Msg("shutdown_timeout reached while closing WebSockets: cut the rest")
		}
		s.endSessions(ctx)
		// With Redis, what cannot be delivered in time is handed to
		// another node: that takes a few round trips, kept out of the
		// time close events are given.
		wctx := ctx
		if s.registry != nil {
			var wcancel context.CancelFunc
			wctx, wcancel = context.WithTimeout(ctx, s.cfg.ShutdownTimeout-handOverTime(s.cfg.ShutdownTimeout)-time.Since(start))
			defer wcancel()
		}
		// On failure Wait logs how many close events were not delivered
		// and counts them (cablecar_close_events_abandoned_total).
		err := s.cb.Wait(wctx)
		if s.registry != nil {
			if err != nil {
				// The app is down: those close events stay in this node's
				// record, and a surviving node posts them, same ids.
				s.registry.HandOver(s.cb.Undelivered())
			}
			// Whatever is still tracked stays in Redis for a survivor;
			// the rest of the node's record goes.
			if err := s.registry.Leave(ctx); err != nil {
				s.log.Warn().Err(err).Msg("leaving Redis; other nodes post this node's close events once its lease lapses")
			}
			s.stopReaper()
			<-s.reaperDone
		}
		s.stopSessionStore()
	}()

	err := s.front.ShutdownWithContext(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn().Int32("open_connections", s.front.GetOpenConnectionsCount()).
			Msg("shutdown_timeout reached: cutting the connections still open")
	} else if err != nil {
		s.log.Warn().Err(err).Msg("closing the front listener")
	}
	<-wsDone
	s.presence.close()
	s.proxy.Close()
	if s.jwt != nil {
		s.jwt.Close()
	}
	if err := s.broker.Close(); err != nil {
		s.log.Warn().Err(err).Msg("closing the broker")
	}
	if s.adminLn != nil {
		// The admin listener goes last so that probes see 503, not a refused
		// connection, for as long as the drain lasts.
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.admin.Shutdown(actx)
		acancel()
	}
	s.log.Info().Dur("took_ms", time.Since(start)).Msg("stopped")
	return nil
}
