package appconn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestErrorMeanings(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	tests := []struct {
		name                  string
		err                   error
		dial, lost, isTimeout bool
	}{
		{name: "dial refused", err: &DialError{Err: refused}, dial: true},
		{name: "dial timed out", err: &DialError{Err: os.ErrDeadlineExceeded}, dial: true, isTimeout: true},
		{name: "wrapped dial", err: fmt.Errorf("accept: %w", &DialError{Err: refused}), dial: true},
		{name: "eof", err: io.EOF, lost: true},
		{name: "closed", err: fasthttp.ErrConnectionClosed, lost: true},
		{name: "reset", err: &net.OpError{Op: "read", Err: syscall.ECONNRESET}, lost: true},
		{name: "broken pipe", err: &net.OpError{Op: "write", Err: syscall.EPIPE}, lost: true},
		{name: "fasthttp timeout", err: fasthttp.ErrTimeout, isTimeout: true},
		{name: "deadline", err: fmt.Errorf("read: %w", os.ErrDeadlineExceeded), isTimeout: true},
		{name: "refused outside a dial", err: refused},
		{name: "other", err: errors.New("malformed response")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsDial(tt.err); got != tt.dial {
				t.Errorf("IsDial = %v", got)
			}
			if got := ConnLost(tt.err); got != tt.lost {
				t.Errorf("ConnLost = %v", got)
			}
			if got := IsTimeout(tt.err); got != tt.isTimeout {
				t.Errorf("IsTimeout = %v", got)
			}
		})
	}
}

// A request is resent once, and only when its connection was lost: a
// timeout may mean the app is still working on it.
func TestRetryStale(t *testing.T) {
	var req fasthttp.Request
	for _, tt := range []struct {
		attempts int
		err      error
		want     bool
	}{
		{1, io.EOF, true},
		{2, io.EOF, false},
		{1, fasthttp.ErrTimeout, false},
		{1, &DialError{Err: syscall.ECONNREFUSED}, false},
	} {
		reset, retry := RetryStale(&req, tt.attempts, tt.err)
		if reset || retry != tt.want {
			t.Errorf("RetryStale(attempt %d, %v) = %v, %v; want false, %v", tt.attempts, tt.err, reset, retry, tt.want)
		}
	}
}

// What Dial returns as an error reaches the caller as a *DialError, and
// Dial is given no more than the request's time.
func TestNewHostClientDial(t *testing.T) {
	var gotTimeout time.Duration
	hc := NewHostClient(Pool{
		Network: "unix", Address: "/nonexistent/app.sock",
		Dial: func(timeout time.Duration) (net.Conn, error) {
			gotTimeout = timeout
			return nil, syscall.ENOENT
		},
		MaxConns: 1,
	})
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://localhost/")
	err := hc.DoTimeout(req, resp, time.Minute)
	if !IsDial(err) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("err %v (%T), want a *DialError wrapping ENOENT", err, err)
	}
	if gotTimeout <= 0 || gotTimeout > time.Minute {
		t.Errorf("Dial given %v of a one-minute request", gotTimeout)
	}
	if hc.Addr != "app.sock" {
		t.Errorf("Addr %q for a unix socket", hc.Addr)
	}
}
