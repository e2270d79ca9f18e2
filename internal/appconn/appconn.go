// Package appconn is how Cablecar talks to the app over HTTP: the
// keep-alive pool settings that the plain-HTTP pass-through (proxy) and
// the callbacks (callback) share, and what a failed round trip to the app
// means. Each of them owns its own pool and decides what a failure tells
// the client; this package only keeps the parts that must not drift apart.
package appconn

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// MaxHeaderBytes bounds request and response headers. fasthttp's 4 KiB
// default is too small for apps with a few cookies; Puma accepts far more,
// nginx 4×8 KiB.
const MaxHeaderBytes = 16 << 10

// writeBufferSize is what one write to the app carries at most; a larger
// body goes in several.
const writeBufferSize = 16 << 10

// Pool is what differs between the pools to the app.
type Pool struct {
	Network, Address string // "tcp","127.0.0.1:3001" or "unix","/run/puma.sock"
	// Dial opens one connection to the app. timeout is what is left of
	// the request's time, 0 when the request has none. An error is
	// returned wrapped in a *DialError.
	Dial func(timeout time.Duration) (net.Conn, error)
	// MaxConns caps the connections open at once; a request waits up to
	// MaxConnWait for one to free up, then fails with
	// fasthttp.ErrNoFreeConns.
	MaxConns    int
	MaxConnWait time.Duration
	// IdleTimeout closes a pooled connection idle this long: keep it below
	// the app server's own (Puma's persistent_timeout is 20 s), so that a
	// connection the app is about to close is not reused.
	IdleTimeout time.Duration
	// RetryIfErr decides whether a failed request is sent again; nil is
	// RetryStale.
	RetryIfErr fasthttp.RetryIfErrFunc
}

// NewHostClient builds the keep-alive pool to the app: paths sent as they
// came (no normalizing, so a signature over the path still matches), no
// User-Agent of fasthttp's own, headers up to MaxHeaderBytes. The caller
// may set what is its own (body limits, streaming) before first use.
func NewHostClient(p Pool) *fasthttp.HostClient {
	addr := p.Address
	if p.Network == "unix" {
		// fasthttp wants a host for its pool bookkeeping; Dial ignores it.
		addr = "app.sock"
	}
	retry := p.RetryIfErr
	if retry == nil {
		retry = RetryStale
	}
	dial := p.Dial
	return &fasthttp.HostClient{
		Addr: addr,
		DialTimeout: func(_ string, timeout time.Duration) (net.Conn, error) {
			c, err := dial(timeout)
			if err != nil {
				return nil, &DialError{Err: err}
			}
			return c, nil
		},
		MaxConns:                 p.MaxConns,
		MaxConnWaitTimeout:       p.MaxConnWait,
		MaxIdleConnDuration:      p.IdleTimeout,
		ReadBufferSize:           MaxHeaderBytes,
		WriteBufferSize:          writeBufferSize,
		DisablePathNormalizing:   true,
		NoDefaultUserAgentHeader: true,
		RetryIfErr:               retry,
	}
}

// DialError is a failure to connect to the app: it never got the request,
// so the app is unreachable, however long the dial took.
type DialError struct{ Err error }

func (e *DialError) Error() string { return "dial: " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// IsDial reports whether err is a failure to connect to the app.
func IsDial(err error) bool {
	var de *DialError
	return errors.As(err, &de)
}

// RetryStale sends a request once more when a pooled keep-alive connection
// turned out to have been closed by the app before it answered (ConnLost).
// A timeout is never resent: the app may still be working on the first
// attempt. Whether the request may be sent twice at all is the caller's
// to decide before it calls this.
func RetryStale(_ *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
	if attempts > 1 {
		return false, false
	}
	return false, ConnLost(err)
}

// ConnLost reports a connection the app closed before it answered: a stale
// keep-alive connection, or an app that died.
func ConnLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, fasthttp.ErrConnectionClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// IsTimeout reports a round trip (or a read of it) that ran out of time.
func IsTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, fasthttp.ErrTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
