// Package sidecar wires Cablecar's parts together from a config.Config and
// runs them: the front listener (proxy, later WebSockets), the admin
// listener, and the graceful shutdown that ties them together. main stays a
// few lines; everything here can be started from a test.
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
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/admin"
	"github.com/cablecar/cablecar/config"
	"github.com/cablecar/cablecar/proxy"
)

// Version is set at build time (-ldflags "-X …sidecar.Version=…").
var Version = "dev"

// Sidecar is one running Cablecar node.
type Sidecar struct {
	cfg     *config.Config
	log     zerolog.Logger
	proxy   *proxy.Proxy
	front   *fasthttp.Server
	frontLn net.Listener
	admin   *admin.Server
	adminLn net.Listener // nil when admin.listen is ""
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cablecar_build_info", Help: "Always 1; the version is a label.",
		ConstLabels: prometheus.Labels{"version": Version},
	}, func() float64 { return 1 }))

	pcfg := proxyConfig(cfg)
	p := proxy.New(pcfg, log, reg)
	s := &Sidecar{
		cfg:   cfg,
		log:   log,
		proxy: p,
		front: proxy.NewServer(pcfg, p.ServeHTTP, log),
		admin: admin.New(log, reg),
	}
	s.admin.AddCheck("app", p.Ping)

	var err error
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
	return s, nil
}

func proxyConfig(cfg *config.Config) proxy.Config {
	return proxy.Config{
		Network:           cfg.Upstream.Network,
		Address:           cfg.Upstream.Address,
		ConnectTimeout:    cfg.Proxy.ConnectTimeout,
		ResponseTimeout:   cfg.Proxy.ResponseTimeout,
		IdleTimeout:       cfg.Proxy.IdleTimeout,
		ClientIdleTimeout: cfg.Proxy.ClientIdleTimeout,
		MaxConns:          cfg.Proxy.MaxConns,
		TrustedProxies:    cfg.Proxy.TrustedProxies,
		HealthPath:        cfg.Proxy.HealthPath,
		SensitiveParams:   []string{cfg.Auth.JWT.QueryParam},
	}
}

// warnInactive says so when a section that this build validates but does
// not act on yet has been changed from its defaults: a setting that silently
// does nothing is worse than a loud one.
func warnInactive(cfg *config.Config, log zerolog.Logger) {
	def := config.Default()
	for name, pair := range map[string][2]any{
		"broker":    {cfg.Broker, def.Broker},
		"websocket": {cfg.WebSocket, def.WebSocket},
		"callback":  {cfg.Callback, def.Callback},
		"auth":      {cfg.Auth, def.Auth},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			log.Warn().Str("section", name).Msg("configured, but not active in this build: WebSocket, Redis and JWT support are not built yet")
		}
	}
}

// Addr is the front listener's address (useful with port 0).
func (s *Sidecar) Addr() net.Addr { return s.frontLn.Addr() }

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

	select {
	case err := <-errc:
		// A listener failed on its own: nothing to drain gracefully.
		s.proxy.Close()
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	return s.shutdown()
}

func (s *Sidecar) shutdown() error {
	start := time.Now()
	s.log.Info().Dur("timeout", s.cfg.ShutdownTimeout).Msg("shutting down: not ready, no new connections, finishing in-flight requests")
	s.admin.Drain()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()

	err := s.front.ShutdownWithContext(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn().Int32("open_connections", s.front.GetOpenConnectionsCount()).
			Msg("shutdown_timeout reached: cutting the connections still open")
	} else if err != nil {
		s.log.Warn().Err(err).Msg("closing the front listener")
	}
	s.proxy.Close()
	if s.adminLn != nil {
		// The admin listener goes last so that probes see 503, not a refused
		// connection, for as long as the drain lasts.
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.admin.Shutdown(actx)
		acancel()
	}
	s.log.Info().Dur("took", time.Since(start)).Msg("stopped")
	return nil
}
