// Package admin is Cablecar's operator listener (admin.listen): liveness,
// readiness and Prometheus metrics, and later the broadcast API. It is plain
// net/http: its traffic is a few probes and scrapes, not the hot path, and
// promhttp speaks it natively.
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

// checkTimeout bounds the readiness checks, so that a hung dependency makes
// /readyz answer 503 rather than hang the probe.
const checkTimeout = 2 * time.Second

// Check reports why a dependency is not usable, or nil.
type Check func(ctx context.Context) error

type namedCheck struct {
	name  string
	check Check
}

// Server serves the admin endpoints.
type Server struct {
	log      zerolog.Logger
	mux      *http.ServeMux
	srv      *http.Server
	draining atomic.Bool
	checks   []namedCheck
}

// New builds the admin server. Metrics are gathered from gatherer.
func New(log zerolog.Logger, gatherer prometheus.Gatherer) *Server {
	s := &Server{log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog: promLogger{log}, ErrorHandling: promhttp.ContinueOnError,
	}))
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	return s
}

// AddCheck adds a dependency that must be usable for /readyz to say 200.
// Call it before Serve.
func (s *Server) AddCheck(name string, c Check) {
	s.checks = append(s.checks, namedCheck{name, c})
}

// Drain makes /readyz answer 503 from now on, so that load balancers stop
// sending new work while in-flight work finishes.
func (s *Server) Drain() { s.draining.Store(true) }

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// Shutdown stops the listener and waits for open requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		text(w, http.StatusServiceUnavailable, "not ready: shutting down")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
	defer cancel()
	problems := make([]string, len(s.checks))
	var wg sync.WaitGroup
	for i, c := range s.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.check(ctx); err != nil {
				problems[i] = c.name + ": " + err.Error()
			}
		}()
	}
	wg.Wait()
	var failed []string
	for _, p := range problems {
		if p != "" {
			failed = append(failed, p)
		}
	}
	if len(failed) > 0 {
		s.log.Debug().Strs("problems", failed).Msg("not ready")
		text(w, http.StatusServiceUnavailable, "not ready: "+strings.Join(failed, "; "))
		return
	}
	text(w, http.StatusOK, "ready")
}

func text(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}

type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) { l.log.Error().Msg(fmt.Sprint(v...)) }
