package e2e

import (
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The shutdown event (SPEC §5): on SIGTERM, connections whose accept
// listed shutdown in Cablecar-Events are posted {"type":"shutdown"}; what
// the replies send arrives before the 1012; then the close events (by
// shutdown). Run with
//
//	go test -race -count=1 -run 'TestShutdownEvent' ./e2e/

// untilClose is what a client got, in order, until the server's close
// frame: the text messages and the close code (0: no close frame).
type untilClose struct {
	texts []string
	code  int
	at    time.Time // when the close frame came
}

// readUntilClose reads ws on a goroutine of its own until the close frame
// and hands over what it got.
func readUntilClose(ws *WSClient, timeout time.Duration) <-chan untilClose {
	out := make(chan untilClose, 1)
	go func() {
		var got untilClose
		_ = ws.Conn.SetReadDeadline(time.Now().Add(timeout))
		for {
			_, b, err := ws.Conn.ReadMessage()
			if err == nil {
				got.texts = append(got.texts, string(b))
				continue
			}
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				got.code, got.at = ce.Code, time.Now()
			}
			out <- got
			return
		}
	}()
	return out
}

func eventTypes(l WSAppLog) []string {
	var out []string
	for _, e := range l.Events() {
		out = append(out, e.Type)
	}
	return out
}

func TestShutdownEvent(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	all := "open,message,close,shutdown"

	// The reply's send arrives before the 1012; a connection that did not
	// ask gets no shutdown event, and only the 1012.
	t.Run("Goodbye", func(t *testing.T) {
		t.Parallel()
		c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
			"shutdown_timeout": "10s", "websocket.shutdown_grace": "5s"}})
		asker, askerID := ConnectWS(t, c, p, target("/ws/chat/bye", "events", all, "on_shutdown", "echo:goodbye"), nil)
		other, otherID := ConnectWS(t, c, p, target("/ws/chat/bye-other", "on_shutdown", "echo:goodbye"), nil)
		WaitOpen(t, p, askerID, wsWait)
		WaitOpen(t, p, otherID, wsWait)
		askerGot, otherGot := readUntilClose(asker, 15*time.Second), readUntilClose(other, 15*time.Second)

		c.Signal(syscall.SIGTERM)
		if got := <-askerGot; !slices.Equal(got.texts, []string{"goodbye"}) || got.code != websocket.CloseServiceRestart {
			t.Errorf("the connection that asked got %q then close %d; want \"goodbye\" then 1012", got.texts, got.code)
		}
		if got := <-otherGot; len(got.texts) != 0 || got.code != websocket.CloseServiceRestart {
			t.Errorf("the connection that did not ask got %q then close %d; want only 1012", got.texts, got.code)
		}
		closeEventsBy(t, p, []string{askerID, otherID}, "shutdown", 10*time.Second)
		if got := eventTypes(AppLog(t, p, askerID)); !slices.Equal(got, []string{"open", "shutdown", "close"}) {
			t.Errorf("events of the connection that asked: %v", got)
		}
		if got := eventTypes(AppLog(t, p, otherID)); !slices.Equal(got, []string{"open", "close"}) {
			t.Errorf("events of the connection that did not ask: %v", got)
		}
		if code, err := c.Wait(10 * time.Second); err != nil || code != 0 {
			t.Fatalf("exit %d, %v", code, err)
		}
	})

	// An app slower than the grace does not hold the shutdown: the 1012
	// comes at the end of the grace (generous margin), without the
	// goodbye, and the close event still reaches the app.
	t.Run("SlowApp", func(t *testing.T) {
		t.Parallel()
		const grace = time.Second
		c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
			"shutdown_timeout": "15s", "websocket.shutdown_grace": "1s"}})
		// The app sleeps 4 s on the shutdown event, then would say goodbye.
		ws, id := ConnectWS(t, c, p, target("/ws/chat/bye-slow", "events", all, "on_shutdown", "slow:4"), nil)
		WaitOpen(t, p, id, wsWait)
		got := readUntilClose(ws, 15*time.Second)

		signalled := time.Now()
		c.Signal(syscall.SIGTERM)
		r := <-got
		if r.code != websocket.CloseServiceRestart || len(r.texts) != 0 {
			t.Fatalf("got %q then close %d; want only 1012", r.texts, r.code)
		}
		if took := r.at.Sub(signalled); took > grace+2*time.Second {
			t.Errorf("the 1012 came %v after SIGTERM with a grace of %v: the slow app held the shutdown", took, grace)
		} else {
			t.Logf("1012 %v after SIGTERM (grace %v, the app takes 4 s)", took.Round(time.Millisecond), grace)
		}
		closeEventsBy(t, p, []string{id}, "shutdown", 12*time.Second)
		if types := eventTypes(AppLog(t, p, id)); !slices.Equal(types, []string{"open", "shutdown", "close"}) {
			t.Errorf("events %v", types)
		}
		if code, err := c.Wait(15 * time.Second); err != nil || code != 0 {
			t.Fatalf("exit %d, %v", code, err)
		}
	})
}
