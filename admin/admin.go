// Package admin is Cablecar's operator listener (admin.listen): liveness,
// readiness, Prometheus metrics and the broadcast API. It is plain
// net/http: its traffic is a few probes, scrapes and API calls, not the hot
// path, and promhttp speaks it natively.
//
// It listens on loopback unless an api_key is set (config refuses
// otherwise), yet a web page open in a browser on the same machine can
// still reach it; guard.go refuses what such a page could send.
package admin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// checkTimeout bounds the readiness checks, so that a hung dependency is
// reported (and, if it gates readiness, makes /readyz answer 503) rather
// than hang the probe.
const checkTimeout = 2 * time.Second

// Check reports why a dependency is not usable, or nil.
type Check func(ctx context.Context) error

type namedCheck struct {
	name  string
	check Check
	gates bool // a failure makes /readyz 503; else it only shows in the body
}

// Server serves the admin endpoints.
type Server struct {
	log      zerolog.Logger
	mux      *http.ServeMux
	srv      *http.Server
	draining atomic.Bool
	checks   []namedCheck
	// keyed: an admin.api_key is set (EnableAPI), so the Host of a request
	// need not be checked against DNS rebinding.
	keyed    bool
	api      *api // set by EnableAPI
	gatherer prometheus.Gatherer
	status   *statusPage // set by EnableStatus
}

// New builds the admin server. Metrics are gathered from gatherer.
func New(log zerolog.Logger, gatherer prometheus.Gatherer) *Server {
	s := &Server{log: log, mux: http.NewServeMux(), gatherer: gatherer}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog: promLogger{log}, ErrorHandling: promhttp.ContinueOnError,
	}))
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	return s
}

// ServeHTTP refuses what a web page could send through a browser (see
// guard.go), then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if msg := s.refusal(r); msg != "" {
		s.log.Debug().Str("origin", r.Header.Get("Origin")).Str("host", r.Host).Str("path", r.URL.Path).Msg("admin request refused: " + msg)
		writeJSON(w, http.StatusForbidden, map[string]string{"error": msg})
		return
	}
	s.mux.ServeHTTP(w, r)
}

// AddCheck adds a dependency that must be usable for /readyz to say 200
// (the app; the JWKS, before whose first key set no token can be
// verified). Call it before Serve.
func (s *Server) AddCheck(name string, c Check) {
	s.checks = append(s.checks, namedCheck{name, c, true})
}

// AddSoftCheck adds a dependency that /readyz reports in its body but
// that does not make it fail: the broker, whose outage leaves plain HTTP
// and accepts working (taking every node out of a load balancer for a
// Redis blip would be worse). Call it before Serve.
func (s *Server) AddSoftCheck(name string, c Check) {
	s.checks = append(s.checks, namedCheck{name, c, false})
}

// Drain makes /readyz answer 503 from now on, so that load balancers stop
// sending new work while in-flight work finishes.
func (s *Server) Drain() { s.draining.Store(true) }

// Serve serves on ln until Shutdown; the status page's sampler
// (status_ring.go) runs as long.
func (s *Server) Serve(ln net.Listener) error {
	if s.status != nil {
		stop, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			s.status.sampler.run(stop)
		}()
		defer func() { close(stop); <-done }()
	}
	if err := s.srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// Shutdown stops the listener and waits for open requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// readyz answers 200 "ready" or 503 "not ready", then a line per check
// ("app: ok", "broker: Redis: connection refused"), in the order they
// were added (SPEC §5).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		text(w, http.StatusServiceUnavailable, "not ready\nshutting down")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
	defer cancel()
	errs := make([]error, len(s.checks))
	var wg sync.WaitGroup
	for i, c := range s.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.check(ctx)
		}()
	}
	wg.Wait()
	var b strings.Builder
	ready := true
	var failed []string
	for i, c := range s.checks {
		status := "ok"
		if errs[i] != nil {
			status = oneLine(errs[i].Error())
			failed = append(failed, c.name+": "+status)
			if c.gates {
				ready = false
			}
		}
		b.WriteString("\n" + c.name + ": " + status)
	}
	if !ready {
		s.log.Debug().Strs("problems", failed).Msg("not ready")
		text(w, http.StatusServiceUnavailable, "not ready"+b.String())
		return
	}
	text(w, http.StatusOK, "ready"+b.String())
}

// oneLine keeps each dependency on its line whatever its error says.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

func text(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}

type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) { l.log.Error().Msg(fmt.Sprint(v...)) }
