package e2e

import (
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A close event outlives an app outage (SPEC §3): it is retried for
// callback.close_retry_for, at most 30 s between tries, and reaches the app
// once the app is back; a SIGTERM during the outage still exits within
// shutdown_timeout, and with Redis leaves what it could not deliver to a
// surviving node (SPEC §5). Outages are made by the test app's failn:N
// command (500 to the first N POSTs carrying the close event's id),
// answered for the close event through on_close.

// closeAttempts is what the app made of the close events of a connection:
// the distinct ids it received, and how many POSTs carrying one it
// answered 2xx.
func closeAttempts(l WSAppLog) (ids []string, accepted int) {
	for _, b := range l.Batches {
		if b.Body == nil {
			continue
		}
		for _, e := range b.Body.Events {
			if e.Type != "close" {
				continue
			}
			if !slices.Contains(ids, e.ID) {
				ids = append(ids, e.ID)
			}
			if b.Status >= 200 && b.Status < 300 {
				accepted++
			}
		}
	}
	return ids, accepted
}

// The app fails the close event 7 times, over several seconds of backoff
// (before this change a budget of its own that the config could not
// change): it is kept waiting, seen in the gauge, and delivered once, with
// one id, when the app recovers.
func TestCloseEventOutlivesAppOutage(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, map[string]any{"callback.close_retry_for": "20s"})
	ws, id := ConnectWS(t, c, p, WithQuery(WithQuery("/ws/closeretry", "on_close", "failn:7"), "first", "ready"), nil)
	ws.ExpectText(wsWait, "ready")
	ws.CloseWith(wsWait, 1000, "bye")

	WaitFor(t, 10*time.Second, "the close event waiting (cablecar_close_events_pending 1)", func() bool {
		return c.Metric("cablecar_close_events_pending") == 1
	})
	l := WaitEventsFor(t, p, id, 30*time.Second, "the close event accepted", func(l WSAppLog) bool {
		_, accepted := closeAttempts(l)
		return accepted > 0
	})
	ids, accepted := closeAttempts(l)
	if !slices.Equal(ids, []string{id + ":2"}) || accepted != 1 {
		t.Errorf("close event ids %v, accepted %d times; want %s:2 accepted once", ids, accepted, id)
	}
	if n := l.Attempts[id+":2"]; n != 8 {
		t.Errorf("the close event was posted %d times, want 8 (7 failures, then the success)", n)
	}
	if ev, _ := l.Close(); ev.Code != 1000 || ev.By != "client" {
		t.Errorf("close event %v", ev)
	}
	WaitFor(t, 5*time.Second, "the gauge back to 0", func() bool { return c.Metric("cablecar_close_events_pending") == 0 })
	if n := c.Metric("cablecar_close_events_dropped_total"); n != 0 {
		t.Errorf("cablecar_close_events_dropped_total %v", n)
	}
}

// callback.close_retry_for is the config's: past it a close event is
// dropped, counted and logged.
func TestCloseEventDroppedAfterCloseRetryFor(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, map[string]any{"callback.close_retry_for": "2s"})
	ws, id := ConnectWS(t, c, p, WithQuery(WithQuery("/ws/closeretry", "on_close", "fail"), "first", "ready"), nil)
	ws.ExpectText(wsWait, "ready")
	ws.CloseWith(wsWait, 1000, "")

	c.WaitLog(20*time.Second, "the close event logged as dropped", func(l LogLine) bool {
		return l.Str("level") == "error" && l.Str("conn_id") == id && strings.Contains(l.Str("message"), "close event not delivered")
	})
	if n := c.Metric("cablecar_close_events_dropped_total"); n != 1 {
		t.Errorf("cablecar_close_events_dropped_total %v, want 1", n)
	}
	if n := c.Metric("cablecar_events_dropped_total", "reason=retry_limit"); n != 1 {
		t.Errorf("dropped (retry_limit) %v, want 1", n)
	}
	if n := c.Metric("cablecar_close_events_pending"); n != 0 {
		t.Errorf("cablecar_close_events_pending %v after the drop", n)
	}
}

// SIGTERM while the app fails every close event: the node still exits 0
// within shutdown_timeout, and says in one line how many close events it
// could not deliver.
func TestShutdownDuringAppOutage(t *testing.T) {
	t.Parallel()
	const timeout = 3 * time.Second
	p, c := startStack(t, PumaOptions{}, map[string]any{"shutdown_timeout": timeout.String()})
	const n = 3
	for i := range n {
		ws, _ := ConnectWS(t, c, p, WithQuery(WithQuery("/ws/closeoutage/"+strconv.Itoa(i), "on_close", "fail"), "first", "ready"), nil)
		ws.ExpectText(wsWait, "ready")
	}
	signalled := time.Now()
	c.Signal(syscall.SIGTERM)
	code, err := c.Wait(timeout + 10*time.Second)
	took := time.Since(signalled)
	if err != nil || code != 0 {
		t.Fatalf("exit code %d, %v; want 0", code, err)
	}
	// A generous margin: the contract is shutdown_timeout, the machine is
	// shared.
	if took > timeout+3*time.Second {
		t.Errorf("exited %s after SIGTERM; shutdown_timeout is %s", took, timeout)
	}
	var found bool
	for _, l := range c.LogLines() {
		if v, ok := l.Num("close_events"); ok && strings.Contains(l.Str("message"), "close events not delivered") {
			found = true
			if v != n {
				t.Errorf("logged %v close events undelivered, want %d: %v", v, n, l)
			}
		}
	}
	if !found {
		t.Errorf("no log line with the number of close events undelivered:\n%s", c.Logs())
	}
}

// With Redis, a node SIGTERMed during an app outage leaves the close events
// it could not deliver in its record; the surviving node posts them, with
// the ids the first node gave them, once the app is back.
func TestShutdownHandsCloseEventsToSurvivor(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 2, r.URL, map[string]any{"shutdown_timeout": "3s"})
	leaving, survivor := nodes[0], nodes[1]

	// The app fails each close event 8 times: more than the leaving node
	// can try before its shutdown_timeout (its tries are 0.1, 0.2, 0.4…
	// s apart, after up to a second of close handshakes), few enough for
	// the survivor's retries to get through in a few seconds.
	const failures = 8
	var ids []string
	for i := range 3 {
		ws, id := ConnectWS(t, leaving, p, WithQuery(WithQuery("/ws/handover/"+strconv.Itoa(i), "on_close", "failn:"+strconv.Itoa(failures)), "first", "ready"), nil)
		ws.ExpectText(wsWait, "ready")
		ids = append(ids, id)
	}
	leaving.Signal(syscall.SIGTERM)
	if code, err := leaving.Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("leaving node: exit code %d, %v; want 0", code, err)
	}
	handed := false
	for _, l := range leaving.LogLines() {
		if n, ok := l.Num("connections"); ok && strings.Contains(l.Str("message"), "a surviving node posts them") {
			handed = n == 3
		}
	}
	if !handed {
		t.Errorf("the leaving node did not say it left 3 close events for a survivor:\n%s", leaving.Logs())
	}
	for _, id := range ids {
		var l WSAppLog
		if !poll(nodeLostWait+30*time.Second, func() bool {
			l = AppLog(t, p, id)
			_, accepted := closeAttempts(l)
			return accepted > 0
		}) {
			t.Fatalf("%s: the app never accepted a close event; it had %v\nsurvivor:\n%s", id, l.Events(), survivor.Logs())
		}
		got, accepted := closeAttempts(l)
		// One id, the one the leaving node gave (open is 1): not a
		// node_lost close of its own.
		if !slices.Equal(got, []string{id + ":2"}) || accepted != 1 {
			t.Errorf("%s: close ids %v accepted %d times; want %s:2 accepted once", id, got, accepted, id)
		}
		if n := l.Attempts[id+":2"]; n != failures+1 {
			t.Errorf("%s: the close event was posted %d times, want %d: the failures, then the success", id, n, failures+1)
		}
		if ev, _ := l.Close(); ev.Code != 1012 || ev.By != "shutdown" {
			t.Errorf("%s: close event %v, want 1012 by shutdown", id, ev)
		}
	}
	if n := survivor.Metric("cablecar_node_lost_connections_total"); n != 3 {
		t.Errorf("the survivor posted %v close events of the node that left, want 3", n)
	}
}
