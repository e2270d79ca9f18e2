package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/internal/appconn"
)

// newUpstreamClient builds the one keep-alive pool to the app.
//
// Deadlines are owned by upstreamConn rather than by fasthttp: fasthttp's
// ReadTimeout bounds the whole response, which would cut every Server-Sent
// Events stream after proxy.response_timeout. We want nginx's
// proxy_read_timeout meaning instead — the app may stay silent that long,
// before its headers and between reads of a streamed body — so each Read and
// Write on the connection moves its own deadline.
func newUpstreamClient(cfg Config, dialer *net.Dialer, dials func()) *fasthttp.HostClient {
	hc := appconn.NewHostClient(appconn.Pool{
		Network: cfg.Network,
		Address: cfg.Address,
		// dialer.Timeout is connect_timeout; a request has no deadline
		// to share with its dial (Do, not DoTimeout: see above).
		Dial: func(time.Duration) (net.Conn, error) {
			c, err := dialer.Dial(cfg.Network, cfg.Address)
			if err != nil {
				return nil, err
			}
			dials()
			return &upstreamConn{Conn: c, timeout: cfg.ResponseTimeout}, nil
		},
		MaxConns:    cfg.MaxConns,
		MaxConnWait: cfg.ResponseTimeout,
		IdleTimeout: cfg.IdleTimeout,
		RetryIfErr:  retryStale,
	})
	hc.StreamResponseBody = true
	return hc
}

// retryStale retries only what is safe to send twice: a request without a
// body, with an idempotent method, that failed because a pooled keep-alive
// connection had been closed by the app before it answered.
func retryStale(req *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
	if req.IsBodyStream() || !isIdempotent(req) {
		return false, false
	}
	return appconn.RetryStale(req, attempts, err)
}

func isIdempotent(req *fasthttp.Request) bool {
	h := &req.Header
	return h.IsGet() || h.IsHead() || h.IsOptions() || h.IsPut() || h.IsDelete() || h.IsTrace()
}

// upstreamConn turns absolute deadlines into a per-operation inactivity limit.
type upstreamConn struct {
	net.Conn
	timeout         time.Duration
	readAt, writeAt lazyDeadline
}

func (c *upstreamConn) Read(p []byte) (int, error) {
	if err := c.readAt.extend(c.Conn.SetReadDeadline, c.timeout); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *upstreamConn) Write(p []byte) (int, error) {
	if err := c.writeAt.extend(c.Conn.SetWriteDeadline, c.timeout); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// lazyDeadline moves an inactivity deadline forward only once it has
// fallen more than a slack behind where it should be. Setting a deadline
// re-arms a runtime timer under a lock; doing so on every read and write
// cost about a quarter of the proxy's CPU per request. The effective limit
// so lies between timeout-slack and timeout. One goroutine at a time uses
// a lazyDeadline, as one goroutine at a time reads (or writes) a conn.
type lazyDeadline struct{ at time.Time }

func (d *lazyDeadline) extend(set func(time.Time) error, timeout time.Duration) error {
	now := time.Now()
	if d.at.Sub(now) > timeout-slack(timeout) {
		return nil
	}
	d.at = now.Add(timeout)
	return set(d.at)
}

// slack is an eighth of the timeout, at most a second.
func slack(timeout time.Duration) time.Duration {
	return min(timeout/8, time.Second)
}

// fasthttp's own deadlines are ignored: Read and Write set them.
func (c *upstreamConn) SetDeadline(time.Time) error      { return nil }
func (c *upstreamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *upstreamConn) SetWriteDeadline(time.Time) error { return nil }

// failure is what the client is told when the app could not answer.
type failure struct {
	status int
	reason string // metric label and log field
	text   string // the one-line body
}

var (
	failUnreachable = failure{fasthttp.StatusBadGateway, "unreachable", "502 Bad Gateway: the app is not reachable\n"}
	failBadResponse = failure{fasthttp.StatusBadGateway, "bad_response", "502 Bad Gateway: the app's response was broken\n"}
	failTimeout     = failure{fasthttp.StatusGatewayTimeout, "timeout", "504 Gateway Timeout: the app did not answer in time\n"}
	failBusy        = failure{fasthttp.StatusServiceUnavailable, "busy", "503 Service Unavailable: all connections to the app are in use\n"}
	failBadRequest  = failure{fasthttp.StatusBadRequest, "bad_request", "400 Bad Request: the request body could not be read\n"}
	failBodyTimeout = failure{fasthttp.StatusRequestTimeout, "body_timeout", "408 Request Timeout: the request body stopped arriving\n"}
)

// classify maps an error from the upstream round trip to what the client sees.
func classify(err error) failure {
	var ce *clientReadError
	switch {
	case appconn.IsDial(err):
		return failUnreachable
	case errors.As(err, &ce) && appconn.IsTimeout(ce.err):
		return failBodyTimeout
	case errors.As(err, &ce):
		return failBadRequest
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return failBusy
	case appconn.IsTimeout(err):
		return failTimeout
	default:
		return failBadResponse
	}
}

// Ping reports whether the app accepts connections, for /readyz. With a
// health path it must also answer a GET of that path with a status below 500.
// It uses its own short-lived connection so that a probe never waits behind,
// or disturbs, the request pool.
func (p *Proxy) Ping(ctx context.Context) error {
	if p.cfg.HealthPath == "" {
		c, err := p.dialer.DialContext(ctx, p.cfg.Network, p.cfg.Address)
		if err != nil {
			return fmt.Errorf("app not reachable at %s", p.cfg.upstreamName())
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost"+p.cfg.HealthPath, nil)
	if err != nil {
		return err
	}
	resp, err := p.health.Do(req)
	if err != nil {
		return fmt.Errorf("app health check %s failed: %s", p.cfg.HealthPath, classify(err).reason)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("app health check %s answered %d", p.cfg.HealthPath, resp.StatusCode)
	}
	return nil
}

func newHealthClient(cfg Config, dialer *net.Dialer) *http.Client {
	return &http.Client{
		Timeout: cfg.ConnectTimeout + cfg.ResponseTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, cfg.Network, cfg.Address)
			},
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
