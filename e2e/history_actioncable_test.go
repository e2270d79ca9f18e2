package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cablecar/cablecar/actioncable"
)

// History on ActionCable ext connections (actioncable-v1-ext-json, SPEC
// §10), as @anycable/web speaks it: positions on broadcasts, the history
// object inside subscribe, the history command, confirm_history and
// reject_history; on two nodes sharing Redis.
//
//	go test -race -count=1 -run 'TestHistoryActionCable' ./e2e/

// acDialExt connects offering the ext protocol and reads the welcome.
func acDialExt(t *testing.T, c *Cablecar) *acClient {
	t.Helper()
	target := c.URL + "/cable?tag=" + uniqueID(t)
	ws, resp, err := DialWS(t, target, nil, actioncable.ExtName, actioncable.V1Name)
	if err != nil {
		t.Fatalf("dial %s: %v %s", target, err, describeResponse(resp))
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != actioncable.ExtName {
		t.Fatalf("101 names protocol %q, want %q", got, actioncable.ExtName)
	}
	cl := &acClient{WSClient: ws, t: t}
	if w := cl.next(wsWait); w["type"] != "welcome" {
		t.Fatalf("first frame %v, want the welcome", w)
	}
	return cl
}

// extSubscribe sends a subscribe carrying history and expects the
// confirmation.
func (cl *acClient) extSubscribe(id string, history map[string]any) {
	cl.t.Helper()
	b, _ := json.Marshal(map[string]any{"command": "subscribe", "identifier": id, "history": history})
	cl.Send(string(b))
	cl.expect(wsWait, confirmFrame(id))
}

// expectBroadcast reads a broadcast and checks its message and stream,
// returning its position.
func (cl *acClient) expectBroadcast(id, stream, msg string) string {
	cl.t.Helper()
	f := cl.next(wsWait)
	off, ok := f["offset"].(float64)
	if f["identifier"] != id || f["message"] != msg || f["stream_id"] != stream || f["epoch"] == nil || !ok {
		cl.t.Fatalf("got frame %v, want %q on %q with its epoch and offset", f, msg, stream)
	}
	return fmt.Sprintf("%s:%d", f["epoch"], int64(off))
}

func extPos(pos string) map[string]any {
	e, o, _ := strings.Cut(pos, ":")
	n, _ := strconv.Atoi(o)
	return map[string]any{"epoch": e, "offset": n}
}

func TestHistoryActionCable(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := startACApp(t)
	var nodes []*Cablecar
	for range 2 {
		nodes = append(nodes, StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: acConfig(map[string]any{
			"broker.url": r.URL, "history.size": historySize, "websocket.pong_timeout": "60s",
		})}))
	}
	for _, c := range nodes {
		WaitFor(t, 15*time.Second, "/readyz 200 on "+c.AdminAddr, func() bool { return c.AdminStatus("/readyz") == 200 })
	}
	stream := "Z2lkOi8vYXBwL1Jvb20vMQ:hist-" + uniqueID(t)
	id := acID(actioncable.TurboChannel, map[string]any{"signed_stream_name": actioncable.NewStreamVerifier(acTurboSecret).Sign(stream)})

	// A fresh page: history since its start, nothing missed.
	a := acDialExt(t, nodes[0])
	a.extSubscribe(id, map[string]any{"since": time.Now().Unix() - 5})
	a.expect(wsWait, map[string]any{"identifier": id, "type": "confirm_history"})
	pos := publishAt(t, nodes[1], stream, "one", "two")
	for i, msg := range []string{"one", "two"} {
		if got := a.expectBroadcast(id, stream, msg); got != pos[i] {
			t.Errorf("broadcast %q at %s, /publish said %s", msg, got, pos[i])
		}
	}
	a.CloseWith(wsWait, 1000, "bye")
	publishAt(t, nodes[1], stream, "three", "four")

	// Back on the other node with its position: the missed ones, then
	// confirm_history, then live.
	b := acDialExt(t, nodes[1])
	b.extSubscribe(id, map[string]any{"since": time.Now().Unix() - 60, "streams": map[string]any{stream: extPos(pos[1])}})
	b.expectBroadcast(id, stream, "three")
	last := b.expectBroadcast(id, stream, "four")
	b.expect(wsWait, map[string]any{"identifier": id, "type": "confirm_history"})
	publishAt(t, nodes[0], stream, "five")
	b.expectBroadcast(id, stream, "five")

	// The history command on a subscription held: from "four", only
	// "five", which this connection has been sent already, so nothing.
	cmd, _ := json.Marshal(map[string]any{"command": "history", "identifier": id,
		"history": map[string]any{"streams": map[string]any{stream: extPos(last)}}})
	b.Send(string(cmd))
	b.expect(wsWait, map[string]any{"identifier": id, "type": "confirm_history"})

	// A position of an epoch the history never had: reject_history.
	c := acDialExt(t, nodes[0])
	c.extSubscribe(id, map[string]any{"streams": map[string]any{stream: map[string]any{"epoch": "gone", "offset": 1}}})
	c.expect(wsWait, map[string]any{"identifier": id, "type": "reject_history"})
	publishAt(t, nodes[1], stream, "six")
	c.expectBroadcast(id, stream, "six")
	b.expectBroadcast(id, stream, "six")
}
