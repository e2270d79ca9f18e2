package e2e

import (
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A Cablecar's life with WebSockets: what /metrics says about them, and a
// graceful shutdown with connections open (SPEC §5).
//
// These are the group TestWebSocket/Lifecycle (see websocket_test.go); run one
// test, here testLifecycleShutdown, with
//
//	go test -race -count=1 -run 'TestWebSocket/Lifecycle/Shutdown$' ./e2e/

// wsLifecycleTests are TestWebSocket/Lifecycle/<name>, each the function
// testLifecycle<name>; they start in this order and run in parallel.
var wsLifecycleTests = []wsTest{
	{"Metrics", testLifecycleMetrics},
	{"Shutdown", testLifecycleShutdown},
	{"ShutdownHalfOpenClient", testLifecycleShutdownHalfOpenClient},
}

func testLifecycleMetrics(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, nil)
	ch := channel("metrics")
	var clients []*WSClient
	var ids []string
	for range 2 {
		ws, id := ConnectWS(t, c, e.p, target("/ws/chat/metrics", "subscribe", ch), nil)
		clients, ids = append(clients, ws), append(ids, id)
	}
	clients[0].Send("echo:m")
	clients[0].ExpectText(wsWait, "m")
	clients[1].SendBinary([]byte{1, 2, 3})
	clients[1].ExpectBinary(wsWait, []byte{1, 2, 3})
	MustAdminPost(t, c, "/publish", map[string]any{"channel": ch, "data": "all"}, "")
	for _, ws := range clients {
		ws.ExpectText(wsWait, "all")
	}
	refused(t, c.URL+"/ws/noaccept/metrics", nil)

	text := c.Metrics()
	var names []string
	for line := range strings.SplitSeq(text, "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok && strings.HasPrefix(name, "cablecar_") &&
			!strings.HasPrefix(name, "cablecar_proxy_") {
			names = append(names, name)
		}
	}
	t.Logf("%d metric families beyond the proxy's: %s", len(names), strings.Join(names, ", "))
	if len(names) == 0 {
		t.Fatal("no cablecar_ metrics beyond the proxy's")
	}
	if v := c.Metric(wsOpenGauge); v != 2 {
		t.Errorf("%s = %v with two connections open", wsOpenGauge, v)
	}
	for _, check := range wsMetricChecks {
		if v, ok := MetricValue(text, check.name, check.labels...); !ok || v < check.min {
			t.Errorf("%s%v = %v (present: %v), want at least %v", check.name, check.labels, v, ok, check.min)
		}
	}

	for _, ws := range clients {
		ws.CloseWith(wsWait, 1000, "")
	}
	closeEventsBy(t, e.p, ids, "client", wsWait)
	WaitFor(t, wsWait, wsOpenGauge+" back to 0", func() bool { return c.Metric(wsOpenGauge) == 0 })
	WaitFor(t, wsWait, "cablecar_webhooks_in_flight back to 0", func() bool { return c.Metric("cablecar_webhooks_in_flight") == 0 })
	WaitFor(t, wsWait, `cablecar_closes_total{by="client"} to count both`, func() bool {
		return c.Metric("cablecar_closes_total", "by=client") == 2
	})
}

// SIGTERM with clients open: each gets 1012, the app gets each close
// event, /readyz says 503 and new upgrades are refused while close
// webhooks drain, and the process exits 0 within shutdown_timeout.
func testLifecycleShutdown(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"shutdown_timeout": "6s"})
	// Each close webhook takes the app 2 s, so the drain lasts that long.
	tgt := target("/ws/chat/shutdown", "on_close", "slow:2")
	var clients []*WSClient
	var ids []string
	for range 3 {
		ws, id := ConnectWS(t, c, e.p, tgt, nil)
		clients, ids = append(clients, ws), append(ids, id)
	}
	for _, id := range ids {
		WaitOpen(t, e.p, id, wsWait)
	}

	signalled := time.Now()
	c.Signal(syscall.SIGTERM)
	WaitFor(t, time.Second, "/readyz 503 after SIGTERM", func() bool { return c.AdminStatus("/readyz") == 503 })
	if ws, resp, err := DialWS(t, c.URL+"/ws/chat/late", nil); err == nil {
		ws.Conn.Close()
		t.Errorf("a new upgrade during the drain got %d", resp.StatusCode)
	} else if resp != nil && resp.StatusCode == http.StatusSwitchingProtocols {
		t.Errorf("a new upgrade during the drain got 101")
	}
	for i, ws := range clients {
		if code, reason := ws.ExpectClose(wsWait); code != 1012 {
			t.Errorf("client %d closed with %d %q, want 1012", i, code, reason)
		}
	}
	if c.Exited() {
		t.Errorf("cablecar exited %s after SIGTERM, before its close webhooks (2 s each) were answered",
			time.Since(signalled).Round(time.Millisecond))
	}
	closeEventsBy(t, e.p, ids, "shutdown", 8*time.Second)
	code, err := c.Wait(8 * time.Second)
	for _, line := range c.LogLines() {
		if line.Str("level") == "error" {
			t.Errorf("cablecar logged during the shutdown: %q", line.Str("message"))
		}
	}
	elapsed := time.Since(signalled)
	if err != nil || code != 0 {
		t.Fatalf("exit code %d, %v after %s; want 0", code, err, elapsed)
	}
	if elapsed > 6500*time.Millisecond {
		t.Errorf("exit %s after SIGTERM; shutdown_timeout is 6s", elapsed.Round(time.Millisecond))
	}
	t.Logf("exit 0 %s after SIGTERM", elapsed.Round(time.Millisecond))
}

// A client that never answers the close frame must not cost its close
// event, even with a short shutdown_timeout: the app's presence count
// depends on it.
func testLifecycleShutdownHalfOpenClient(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"shutdown_timeout": "3s"})
	tag := NewTag(t)
	if _, resp := RawHandshake(t, c.Addr, target("/ws/chat/shutdown-halfopen", "tag", tag)); resp.StatusCode != 101 {
		t.Fatalf("handshake: %d", resp.StatusCode)
	}
	id := ConnID(t, e.p, tag)
	WaitOpen(t, e.p, id, wsWait)

	signalled := time.Now()
	c.Signal(syscall.SIGTERM)
	code, err := c.Wait(8 * time.Second)
	elapsed := time.Since(signalled)
	if err != nil || code != 0 {
		t.Errorf("exit code %d, %v after %s; want 0", code, err, elapsed)
	}
	// The race detector adds a second to every exit.
	if limit := 3*time.Second + 1500*time.Millisecond; elapsed > limit {
		t.Errorf("exit %s after SIGTERM; shutdown_timeout is 3s", elapsed.Round(time.Millisecond))
	}
	// Whether a close event sent after the deadline still lands depends
	// on how fast the process exits, so Cablecar's own word counts too:
	// a drop is logged at error level.
	for _, line := range c.LogLines() {
		if line.Str("level") == "error" {
			t.Errorf("cablecar logged during the shutdown: %q", line.Str("message"))
		}
	}
	l := AppLog(t, e.p, id)
	if ev, ok := l.Close(); !ok || ev.By != "shutdown" {
		t.Errorf("close event of a client that never answered the close frame: %v (received: %v); want one by shutdown",
			ev, ok)
	}
}

// wsOpenGauge and wsMetricChecks name what the implementation exports
// (upgrade/metrics.go, callback/metrics.go, pubsub/metered.go), with the
// least each must show after the traffic of the Metrics test.
const (
	wsOpenGauge    = "cablecar_connections"
	wsQueueDropped = "cablecar_send_queue_dropped_total"
)

var wsMetricChecks = []struct {
	name   string
	labels []string
	min    float64
}{
	{"cablecar_upgrades_total", []string{"result=accepted"}, 2},
	{"cablecar_upgrades_total", []string{"result=rejected"}, 1},
	{"cablecar_messages_total", []string{"direction=in"}, 2},
	{"cablecar_messages_total", []string{"direction=out"}, 4}, // two echoes, one publish to two
	{"cablecar_message_bytes_total", []string{"direction=in"}, float64(len("echo:m") + 3)},
	{"cablecar_message_bytes_total", []string{"direction=out"}, float64(1 + 3 + 2*len("all"))},
	{"cablecar_webhooks_total", []string{"kind=accept", "outcome=ok"}, 2},
	{"cablecar_webhooks_total", []string{"kind=events", "outcome=ok"}, 2},
	{"cablecar_webhook_duration_seconds_count", []string{"kind=accept"}, 3},
	{"cablecar_webhook_events_total", nil, 4}, // two opens, two messages
	{"cablecar_broker_published_total", nil, 1},
}
