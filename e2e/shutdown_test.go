package e2e

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// refusesConnections reports whether a new TCP connection to addr is
// refused, which is what a closed listener looks like.
func refusesConnections(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err == nil {
		conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// TestShutdownFinishesInFlight: SIGTERM during a request turns /readyz 503,
// closes the listener, lets the request finish, and exits 0.
func TestShutdownFinishesInFlight(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, map[string]any{"shutdown_timeout": "10s"})
	client := newClient(t)

	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, body, err := get(client, c.URL+"/slow?seconds=2", 15*time.Second)
		done <- result{code, body, err}
	}()
	WaitFor(t, 5*time.Second, "the app to receive /slow", func() bool { return p.Hits("/slow") == 1 })

	signalled := time.Now()
	c.Signal(syscall.SIGTERM)
	WaitFor(t, time.Second, "/readyz 503 after SIGTERM", func() bool { return c.AdminStatus("/readyz") == 503 })
	WaitFor(t, time.Second, "new connections to be refused after SIGTERM", func() bool { return refusesConnections(c.Addr) })
	if code, _ := c.Admin("/healthz"); code != 200 {
		t.Errorf("/healthz during shutdown: %d; the admin listener serves until exit", code)
	}

	select {
	case r := <-done:
		if r.err != nil || r.code != 200 || r.body != "slow done" {
			t.Fatalf("in-flight request: %d %q %v; want 200 \"slow done\"", r.code, r.body, r.err)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("in-flight request did not complete")
	}
	code, err := c.Wait(10 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("exit code %d, %v; want 0", code, err)
	}
	if d := time.Since(signalled); d > 10*time.Second {
		t.Fatalf("exit %s after SIGTERM; shutdown_timeout is 10s", d)
	}
}

// TestShutdownCutsEndlessStream: a stream that never ends keeps flowing
// during the grace period, is cut at shutdown_timeout, and the exit is still
// clean.
func TestShutdownCutsEndlessStream(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, map[string]any{"shutdown_timeout": "2s"})
	client := newClient(t)

	id := uniqueID(t)
	s := openStream(t, client, c.URL+"/sse?n=1000&hold=30&id="+id)
	s.expect(t, "data: 1", 5*time.Second, "first event")
	s.expect(t, "", time.Second, "end of the first event")

	signalled := time.Now()
	c.Signal(syscall.SIGTERM)
	WaitFor(t, time.Second, "/readyz 503 after SIGTERM", func() bool { return c.AdminStatus("/readyz") == 503 })
	p.Release(id)
	s.expect(t, "data: 2", 2*time.Second, "an event sent during the grace period")

	code, err := c.Wait(8 * time.Second)
	elapsed := time.Since(signalled)
	if err != nil || code != 0 {
		t.Fatalf("exit code %d, %v after %s; want 0", code, err, elapsed)
	}
	if elapsed < 1800*time.Millisecond || elapsed > 4*time.Second {
		t.Fatalf("exit %s after SIGTERM; want soon after the 2s shutdown_timeout", elapsed.Round(time.Millisecond))
	}
	for range 4 {
		line, err := s.next(3 * time.Second)
		if err == errTimeout {
			t.Fatal("the stream is still open after cablecar exited")
		}
		if err != nil {
			break
		}
		if line != "\n" {
			t.Fatalf("unexpected %q after cablecar exited", line)
		}
	}
}

// TestShutdownSecondSignal: a second signal during the grace period exits at
// once with code 1.
func TestShutdownSecondSignal(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, map[string]any{"shutdown_timeout": "20s"})
	client := newClient(t)

	s := openStream(t, client, c.URL+"/sse?n=1000&hold=30&id="+uniqueID(t))
	s.expect(t, "data: 1", 5*time.Second, "first event")

	c.Signal(syscall.SIGTERM)
	WaitFor(t, time.Second, "/readyz 503 after SIGTERM", func() bool { return c.AdminStatus("/readyz") == 503 })
	if c.Exited() {
		t.Fatal("cablecar exited with a stream still open")
	}
	second := time.Now()
	c.Signal(syscall.SIGTERM)
	code, err := c.Wait(3 * time.Second)
	if err != nil || code != 1 {
		t.Fatalf("exit code %d, %v after the second signal; want 1", code, err)
	}
	if d := time.Since(second); d > time.Second {
		t.Fatalf("exit %s after the second signal; want at once", d)
	}
}

// TestShutdownIdleSIGINT: SIGINT with nothing in flight exits 0 at once,
// even with a client's idle keep-alive connection open: idle is not
// in flight.
func TestShutdownIdleSIGINT(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	client := newClient(t)
	if code := statusOf(client, c.URL+"/hello"); code != 200 {
		t.Fatalf("/hello: %d", code)
	}

	signalled := time.Now()
	c.Signal(syscall.SIGINT)
	code, err := c.Wait(5 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("exit code %d, %v; want 0", code, err)
	}
	if d := time.Since(signalled); d > 2*time.Second {
		t.Fatalf("idle shutdown took %s", d)
	}
}
