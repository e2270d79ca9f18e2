package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestCloseInFlightWhenNodeDies: a connection ended and its close event
// was being retried (the app failing it) when its node was killed. The
// survivor posts that very event, same id, code and by — not a node_lost
// close under the fixed id, which the app could not tell from it and would
// count as a second close (the chaos soak found 6 such in 22,000).
func TestCloseInFlightWhenNodeDies(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 2, r.URL, nil)

	// The app answers this connection's close event 500 the first 4
	// times it arrives, then 204.
	ws, id := joinWS(t, nodes[0], p, WithQuery("/ws/inflight/a", "on_close", "failn:4"))
	ws.CloseWith(wsWait, 1000, "bye")
	WaitEventsFor(t, p, id, wsWait, "the close event tried twice", func(l WSAppLog) bool {
		return len(closeBatches(l)) >= 2
	})
	nodes[0].Kill()

	l := WaitEventsFor(t, p, id, nodeLostWait+30*time.Second, "the close event accepted", func(l WSAppLog) bool {
		for _, b := range closeBatches(l) {
			if b.Status == 204 {
				return true
			}
		}
		return false
	})
	evs := closeEventsIn(closeBatches(l))
	first := evs[0]
	if first.By != "client" || first.Code != 1000 || strings.HasSuffix(first.ID, ":9007199254740991") {
		t.Fatalf("first close event %v, want by client 1000 under its own number", first)
	}
	for _, ev := range evs {
		if ev.ID != first.ID || ev.By != first.By || ev.Code != first.Code {
			t.Errorf("close event %v after %v: the app would count the connection closed twice", ev, first)
		}
	}
	WaitFor(t, nodeLostWait, "the survivor settled the dead node", func() bool {
		return nodes[1].Metric("cablecar_node_lost_connections_total") == 1
	})
	t.Logf("%d tries of close event %s, all under that id", len(evs), first.ID)
}
