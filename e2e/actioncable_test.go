package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/cablecar/cablecar/actioncable"
)

// ActionCable clients (SPEC §9) against the real binary and testdata/acapp,
// an ActionCable app written by hand, under real Puma. The client here
// speaks the wire protocol as @rails/actioncable does.

const acTurboSecret = "turbo-key-for-tests"

// acEnv is the app and a Cablecar in front of it with the Turbo fast lane
// on and a short protocol ping.
type acEnv struct {
	p *Puma
	c *Cablecar
}

func startACApp(t *testing.T) *Puma {
	t.Helper()
	return StartPuma(t, PumaOptions{Rackup: filepath.Join(RepoRoot(t), "testdata", "acapp", "config.ru")})
}

func acConfig(extra map[string]any) map[string]any {
	cfg := map[string]any{
		"actioncable.ping_interval":        "300ms",
		"actioncable.turbo_streams_secret": acTurboSecret,
		"websocket.ping_interval":          "1s",
		"websocket.max_message_size":       "64KiB",
	}
	for k, v := range extra {
		cfg[k] = v
	}
	return cfg
}

// acClient is one ActionCable client connection.
type acClient struct {
	*WSClient
	t  *testing.T
	id string // the connection id, as the app saw it
}

// acDial connects as @rails/actioncable does (it offers
// actioncable-v1-json and actioncable-unsupported), reads the welcome, and
// finds the connection id in the app's log by the path's unique tag.
func acDial(t *testing.T, c *Cablecar, p *Puma, query string) *acClient {
	t.Helper()
	tag := uniqueID(t)
	target := c.URL + "/cable?tag=" + tag
	if query != "" {
		target += "&" + query
	}
	ws, resp, err := DialWS(t, target, nil, actioncable.V1Name, "actioncable-unsupported")
	if err != nil {
		t.Fatalf("dial %s: %v %s", target, err, describeResponse(resp))
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != actioncable.V1Name {
		t.Fatalf("101 names protocol %q, want %q", got, actioncable.V1Name)
	}
	cl := &acClient{WSClient: ws, t: t}
	cl.expect(wsWait, map[string]any{"type": "welcome"})
	WaitFor(t, wsWait, "the app's record of "+tag, func() bool {
		cl.id = acConnByTag(t, p, tag)
		return cl.id != ""
	})
	return cl
}

func acConnByTag(t *testing.T, p *Puma, tag string) string {
	var conns struct {
		Conns []string `json:"conns"`
	}
	acGet(t, p, "/_conns", &conns)
	for _, id := range conns.Conns {
		var log acLog
		acGet(t, p, "/_events?conn="+url.QueryEscape(id), &log)
		for _, a := range log.Accepts {
			if strings.Contains(fmt.Sprint(a["path"]), "tag="+tag) {
				return id
			}
		}
	}
	return ""
}

type acLog struct {
	Accepts []map[string]any `json:"accepts"`
	Events  []map[string]any `json:"events"`
}

func acGet(t *testing.T, p *Puma, path string, v any) {
	t.Helper()
	resp, err := p.Client().Get(p.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v: %.200q", path, err, body)
	}
}

// acEvents is what the app got from connection id.
func acEvents(t *testing.T, p *Puma, id string) []map[string]any {
	var log acLog
	acGet(t, p, "/_events?conn="+url.QueryEscape(id), &log)
	evs := log.Events[:0]
	for _, ev := range log.Events {
		if ev["type"] != "open" {
			evs = append(evs, ev)
		}
	}
	return evs
}

func (cl *acClient) command(kind, identifier, data string) {
	cl.t.Helper()
	cmd := map[string]string{"command": kind, "identifier": identifier}
	if data != "" {
		cmd["data"] = data
	}
	b, _ := json.Marshal(cmd)
	cl.Send(string(b))
}

// next reads the next frame that is not a protocol ping, as a JSON object.
func (cl *acClient) next(timeout time.Duration) map[string]any {
	cl.t.Helper()
	return cl.nextFrame(timeout, false)
}

func (cl *acClient) nextFrame(timeout time.Duration, pings bool) map[string]any {
	cl.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		kind, data, err := cl.Read(time.Until(deadline))
		if err != nil {
			cl.t.Fatalf("reading a frame: %v", err)
		}
		if kind != websocket.TextMessage {
			cl.t.Fatalf("got a %s frame, want text", kindName(kind))
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			cl.t.Fatalf("frame %q is not a JSON object: %v", data, err)
		}
		if m["type"] == "ping" && !pings {
			continue
		}
		return m
	}
}

// expect reads the next frame (pings skipped) and checks it equals want.
func (cl *acClient) expect(timeout time.Duration, want map[string]any) {
	cl.t.Helper()
	got := cl.next(timeout)
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		cl.t.Fatalf("got frame %s, want %s", gb, wb)
	}
}

func acID(channel string, params map[string]any) string {
	m := map[string]any{"channel": channel}
	for k, v := range params {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func confirmFrame(id string) map[string]any {
	return map[string]any{"identifier": id, "type": "confirm_subscription"}
}

func messageFrame(id string, msg any) map[string]any {
	return map[string]any{"identifier": id, "message": msg}
}

// subscribe subscribes and waits for the confirmation.
func (cl *acClient) subscribe(id string) {
	cl.t.Helper()
	cl.command("subscribe", id, "")
	cl.expect(wsWait, confirmFrame(id))
}

func TestActionCable(t *testing.T) {
	t.Parallel()
	p := startACApp(t)
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: acConfig(nil)})
	env := &acEnv{p: p, c: c}
	for _, tc := range []struct {
		name string
		f    func(*testing.T, *acEnv)
	}{
		{"WelcomeAndPing", testACWelcomeAndPing},
		{"SubscribePerformTransmit", testACSubscribePerform},
		{"Broadcast", testACBroadcast},
		{"TwoIdentifiersOneStream", testACTwoIdentifiers},
		{"Unsubscribe", testACUnsubscribe},
		{"Reject", testACReject},
		{"AppClose", testACAppClose},
		{"TooBig", testACTooBig},
		{"Refusal", testACRefusal},
		{"Malformed", testACMalformed},
		{"TurboFastLane", testACTurbo},
		{"AdminSendAndClose", testACAdmin},
		{"AdminCloseChannel", testACAdminCloseChannel},
		{"SubscribeHeaderIgnored", testACSubscribeHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.f(t, env)
		})
	}
}

func testACWelcomeAndPing(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	before := time.Now().Unix()
	ping := cl.nextFrame(wsWait, true)
	if ping["type"] != "ping" {
		t.Fatalf("first frame after the welcome %v, want a ping", ping)
	}
	if s, ok := ping["message"].(float64); !ok || int64(s) < before-1 || int64(s) > time.Now().Unix()+1 {
		t.Fatalf("ping message %v, want the unix time in seconds", ping["message"])
	}
	// Pings keep coming: a second one.
	if ping := cl.nextFrame(wsWait, true); ping["type"] != "ping" {
		t.Fatalf("second frame %v, want a ping", ping)
	}
}

func testACSubscribePerform(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	id := acID("ChatChannel", map[string]any{"room": uniqueID(t), "greet": "hi"})
	cl.subscribe(id)
	cl.expect(wsWait, messageFrame(id, map[string]any{"greeting": "hi"}))
	cl.command("message", id, `{"action":"echo","n":1}`)
	cl.expect(wsWait, messageFrame(id, map[string]any{"action": "echo", "n": float64(1)}))

	// The events: subscribe, then perform with the data as sent and the
	// channel_state the subscribe's reply set.
	evs := acEvents(t, e.p, cl.id)
	if len(evs) < 2 || evs[0]["type"] != "subscribe" || evs[0]["identifier"] != id || evs[0]["channel_state"] != nil {
		t.Fatalf("events %v: want a subscribe of %s without channel_state first", evs, id)
	}
	if evs[1]["type"] != "perform" || evs[1]["data"] != `{"action":"echo","n":1}` ||
		!strings.HasPrefix(fmt.Sprint(evs[1]["channel_state"]), "streams=ChatChannel:") {
		t.Fatalf("second event %v: want the perform with its data and channel_state", evs[1])
	}

	// An unsubscribe carries the state its subscription had, though the
	// subscription is gone by the time the event is posted.
	id2 := acID("ChatChannel", map[string]any{"room": uniqueID(t) + "-2", "greet": "again"})
	cl.subscribe(id2)
	cl.expect(wsWait, messageFrame(id2, map[string]any{"greeting": "again"})) // its reply is applied
	cl.command("unsubscribe", id2, "")
	var unsub map[string]any
	WaitFor(t, wsWait, "the unsubscribe event", func() bool {
		for _, ev := range acEvents(t, e.p, cl.id) {
			if ev["type"] == "unsubscribe" && ev["identifier"] == id2 {
				unsub = ev
				return true
			}
		}
		return false
	})
	if !strings.HasPrefix(fmt.Sprint(unsub["channel_state"]), "streams=ChatChannel:") {
		t.Fatalf("unsubscribe event %v: want the channel_state its subscribe set", unsub)
	}

	// A close lists the identifiers still subscribed.
	cl.CloseWith(wsWait, websocket.CloseNormalClosure, "")
	var closeEv map[string]any
	WaitFor(t, wsWait, "the close event", func() bool {
		for _, ev := range acEvents(t, e.p, cl.id) {
			if ev["type"] == "close" {
				closeEv = ev
				return true
			}
		}
		return false
	})
	if ids, _ := closeEv["identifiers"].([]any); len(ids) != 1 || ids[0] != id {
		t.Fatalf("close event %v: want identifiers [%s]", closeEv, id)
	}
}

func testACBroadcast(t *testing.T, e *acEnv) {
	a, b := acDial(t, e.c, e.p, ""), acDial(t, e.c, e.p, "")
	room := uniqueID(t)
	id := acID("ChatChannel", map[string]any{"room": room})
	a.subscribe(id)
	b.subscribe(id)
	stream := "ChatChannel:" + room
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": stream, "data": `{"n":1}`}, "")
	a.expect(wsWait, messageFrame(id, map[string]any{"n": float64(1)}))
	b.expect(wsWait, messageFrame(id, map[string]any{"n": float64(1)}))
	// Not JSON: a JSON string.
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": stream, "data": "<turbo-stream>"}, "")
	a.expect(wsWait, messageFrame(id, "<turbo-stream>"))
	b.expect(wsWait, messageFrame(id, "<turbo-stream>"))
	// A perform's publish with except_self reaches the other one only.
	a.command("message", id, `{"action":"speak","text":"hello","except_self":true}`)
	b.expect(wsWait, messageFrame(id, map[string]any{"text": "hello", "from": a.id}))
	a.command("message", id, `{"action":"speak","text":"to all"}`)
	a.expect(wsWait, messageFrame(id, map[string]any{"text": "to all", "from": a.id}))
	b.expect(wsWait, messageFrame(id, map[string]any{"text": "to all", "from": a.id}))
}

func testACTwoIdentifiers(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	stream := "shared:" + uniqueID(t)
	id1 := acID("OneChannel", map[string]any{"stream": stream})
	id2 := acID("TwoChannel", map[string]any{"stream": stream})
	cl.subscribe(id1)
	cl.subscribe(id2)
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": stream, "data": `"x"`}, "")
	got := map[string]bool{}
	for range 2 {
		f := cl.next(wsWait)
		if f["message"] != "x" {
			t.Fatalf("frame %v, want message x", f)
		}
		got[fmt.Sprint(f["identifier"])] = true
	}
	if !got[id1] || !got[id2] {
		t.Fatalf("frames for %v, want one for each identifier", got)
	}
}

func testACUnsubscribe(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	s1, s2 := "u1:"+uniqueID(t), "u2:"+uniqueID(t)
	id1 := acID("OneChannel", map[string]any{"stream": s1})
	id2 := acID("TwoChannel", map[string]any{"stream": s2})
	cl.subscribe(id1)
	cl.subscribe(id2)
	cl.command("unsubscribe", id1, "")
	WaitFor(t, wsWait, "the unsubscribe event", func() bool {
		for _, ev := range acEvents(t, e.p, cl.id) {
			if ev["type"] == "unsubscribe" && ev["identifier"] == id1 {
				return true
			}
		}
		return false
	})
	// Published to the dropped stream first, then to the kept one: only
	// the second arrives.
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": s1, "data": `"gone"`}, "")
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": s2, "data": `"kept"`}, "")
	cl.expect(wsWait, messageFrame(id2, "kept"))
	// A perform for the dropped identifier is not_subscribed, not an event.
	cl.command("message", id1, `{"action":"echo"}`)
	cl.command("message", id2, `{"action":"echo"}`)
	cl.expect(wsWait, messageFrame(id2, map[string]any{"action": "echo"}))
}

func testACReject(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	id := acID("RejectChannel", nil)
	cl.command("subscribe", id, "")
	cl.expect(wsWait, map[string]any{"identifier": id, "type": "reject_subscription"})
	// Rejected: no longer subscribed, so it may subscribe again.
	cl.command("subscribe", id, "")
	cl.expect(wsWait, map[string]any{"identifier": id, "type": "reject_subscription"})
}

func testACAppClose(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	id := acID("ChatChannel", map[string]any{"room": uniqueID(t)})
	cl.subscribe(id)
	cl.command("message", id, `{"action":"close","code":4001,"reason":"banned","reconnect":false}`)
	cl.expect(wsWait, map[string]any{"type": "disconnect", "reason": "banned", "reconnect": false})
	if code, reason := cl.ExpectClose(wsWait); code != 4001 || reason != "banned" {
		t.Fatalf("close %d %q, want 4001 banned", code, reason)
	}
}

// A message over websocket.max_message_size: disconnect too_big (the
// client may come back) before the 1009, and a close event by too_big.
func testACTooBig(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	_ = cl.TrySend(websocket.TextMessage, []byte(strings.Repeat("x", 65<<10)))
	cl.expect(wsWait, map[string]any{"type": "disconnect", "reason": "too_big", "reconnect": true})
	cl.ExpectCloseCode(wsWait, websocket.CloseMessageTooBig)
	var closeEv map[string]any
	WaitFor(t, wsWait, "the close event", func() bool {
		for _, ev := range acEvents(t, e.p, cl.id) {
			if ev["type"] == "close" {
				closeEv = ev
				return true
			}
		}
		return false
	})
	if closeEv["by"] != "too_big" || closeEv["code"] != float64(websocket.CloseMessageTooBig) {
		t.Fatalf("close event %v, want 1009 by too_big", closeEv)
	}
}

func testACRefusal(t *testing.T, e *acEnv) {
	for _, q := range []string{"reject=1", "reject=401"} {
		ws, resp, err := DialWS(t, e.c.URL+"/cable?"+q, nil, actioncable.V1Name, "actioncable-unsupported")
		if err != nil {
			t.Fatalf("%s: dial: %v %s; want 101 and a disconnect", q, err, describeResponse(resp))
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != actioncable.V1Name {
			t.Fatalf("%s: 101 names %q, want %q", q, got, actioncable.V1Name)
		}
		cl := &acClient{WSClient: ws, t: t}
		cl.expect(wsWait, map[string]any{"type": "disconnect", "reason": "unauthorized", "reconnect": false})
		cl.ExpectClose(wsWait)
	}
	// A client that also offers another protocol gets the plain refusal.
	_, resp, err := DialWS(t, e.c.URL+"/cable?reject=1", nil, actioncable.V1Name, "chat")
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("mixed offer: err %v %s, want a plain 403", err, describeResponse(resp))
	}
	// An Origin refusal stays a plain 403.
	_, resp, err = DialWS(t, e.c.URL+"/cable", http.Header{"Origin": {"https://evil.example"}}, actioncable.V1Name)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin: err %v %s, want a plain 403", err, describeResponse(resp))
	}
}

func testACMalformed(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	id := acID("ChatChannel", map[string]any{"room": uniqueID(t)})
	before := e.c.Metric("cablecar_actioncable_malformed_commands_total", "reason=not_json")
	cl.Send("not json")
	cl.Send(`{"command":"whisper","identifier":"x"}`)
	cl.Send(`{"command":"subscribe","identifier":7}`)
	cl.Send(`{"command":"message","identifier":"nope","data":"{}"}`)
	cl.SendBinary([]byte{1, 2})
	// Still open, and commands work after them.
	cl.subscribe(id)
	if n := e.c.Metric("cablecar_actioncable_malformed_commands_total", "reason=not_json"); n < before+2 {
		t.Fatalf("not_json count %v, want at least %v", n, before+2)
	}
	for _, why := range []string{"unknown_command", "bad_identifier", "not_subscribed"} {
		if n := e.c.Metric("cablecar_actioncable_malformed_commands_total", "reason="+why); n < 1 {
			t.Fatalf("%s count %v, want at least 1", why, n)
		}
	}
	for _, ev := range acEvents(t, e.p, cl.id) {
		if ev["type"] != "subscribe" && ev["type"] != "open" {
			t.Fatalf("event %v reached the app; malformed commands must not", ev)
		}
	}
}

func testACTurbo(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	stream := "Z2lkOi8vYXBwL1Jvb20vMQ:messages-" + uniqueID(t)
	signed := actioncable.NewStreamVerifier(acTurboSecret).Sign(stream)
	id := acID(actioncable.TurboChannel, map[string]any{"signed_stream_name": signed})
	cl.subscribe(id)
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": stream, "data": "<turbo-stream action=\"append\"></turbo-stream>"}, "")
	cl.expect(wsWait, messageFrame(id, "<turbo-stream action=\"append\"></turbo-stream>"))
	// Tampered: rejected.
	bad := acID(actioncable.TurboChannel, map[string]any{"signed_stream_name": signed[:len(signed)-2] + "00"})
	cl.command("subscribe", bad, "")
	cl.expect(wsWait, map[string]any{"identifier": bad, "type": "reject_subscription"})
	// Neither reached the app.
	for _, ev := range acEvents(t, e.p, cl.id) {
		if ev["type"] == "subscribe" {
			t.Fatalf("event %v reached the app; the fast lane answers alone", ev)
		}
	}
}

func testACAdmin(t *testing.T, e *acEnv) {
	cl := acDial(t, e.c, e.p, "")
	id := acID("ChatChannel", map[string]any{"room": uniqueID(t)})
	cl.subscribe(id)
	MustAdminPost(t, e.c, "/send", map[string]any{"connection": cl.id, "identifier": id, "data": `{"k":"v"}`}, "")
	cl.expect(wsWait, messageFrame(id, map[string]any{"k": "v"}))
	MustAdminPost(t, e.c, "/close", map[string]any{"connection": cl.id, "code": 4002, "reason": "go", "reconnect": false}, "")
	cl.expect(wsWait, map[string]any{"type": "disconnect", "reason": "remote", "reconnect": false})
	cl.ExpectCloseCode(wsWait, 4002)
}

// Admin /close with "channel" closes every connection streaming it, with
// disconnect remote and the request's reconnect, and leaves the others.
func testACAdminCloseChannel(t *testing.T, e *acEnv) {
	room, kept := uniqueID(t), uniqueID(t)
	id := acID("ChatChannel", map[string]any{"room": room})
	keptID := acID("ChatChannel", map[string]any{"room": kept})
	a, b, c := acDial(t, e.c, e.p, ""), acDial(t, e.c, e.p, ""), acDial(t, e.c, e.p, "")
	a.subscribe(id)
	b.subscribe(id)
	c.subscribe(keptID)
	MustAdminPost(t, e.c, "/close", map[string]any{"channel": "ChatChannel:" + room, "code": 4005, "reconnect": false}, "")
	for _, cl := range []*acClient{a, b} {
		cl.expect(wsWait, map[string]any{"type": "disconnect", "reason": "remote", "reconnect": false})
		cl.ExpectCloseCode(wsWait, 4005)
	}
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": "ChatChannel:" + kept, "data": `"still here"`}, "")
	c.expect(wsWait, messageFrame(keptID, "still here"))
}

// Shutdown: every ActionCable client is told server_restart, reconnect.
func TestActionCableShutdown(t *testing.T) {
	t.Parallel()
	p := startACApp(t)
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: acConfig(nil)})
	cl := acDial(t, c, p, "")
	id := acID("ChatChannel", map[string]any{"room": uniqueID(t)})
	cl.subscribe(id)
	c.Signal(syscall.SIGTERM)
	cl.expect(wsWait, map[string]any{"type": "disconnect", "reason": "server_restart", "reconnect": true})
	cl.ExpectCloseCode(wsWait, websocket.CloseServiceRestart)
}

// Two nodes on Redis: a publish in Redis reaches subscriptions on both,
// one frame per identifier; a perform's publish on one node reaches the
// other.
func TestActionCableMultiNode(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := startACApp(t)
	cfg := acConfig(map[string]any{"broker.url": r.URL, "broker.lease_ttl": leaseTTL.String()})
	n1 := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	n2 := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	a, b := acDial(t, n1, p, ""), acDial(t, n2, p, "")
	room := uniqueID(t)
	id := acID("ChatChannel", map[string]any{"room": room})
	a.subscribe(id)
	b.subscribe(id)
	publishRaw(t, r, "cablecar:", "ChatChannel:"+room, []byte(`{"via":"redis"}`))
	a.expect(wsWait, messageFrame(id, map[string]any{"via": "redis"}))
	b.expect(wsWait, messageFrame(id, map[string]any{"via": "redis"}))
	a.command("message", id, `{"action":"speak","text":"across"}`)
	b.expect(wsWait, messageFrame(id, map[string]any{"text": "across", "from": a.id}))
	a.expect(wsWait, messageFrame(id, map[string]any{"text": "across", "from": a.id}))
	// /send with an identifier to a connection on the other node.
	MustAdminPost(t, n1, "/send", map[string]any{"connection": b.id, "identifier": id, "data": "plain"}, "")
	b.expect(wsWait, messageFrame(id, "plain"))
	// /close with a channel, asked of node 1, closes its streamers on both
	// nodes.
	gone := uniqueID(t)
	goneID := acID("ChatChannel", map[string]any{"room": gone})
	a2, b2 := acDial(t, n1, p, ""), acDial(t, n2, p, "")
	a2.subscribe(goneID)
	b2.subscribe(goneID)
	MustAdminPost(t, n1, "/close", map[string]any{"channel": "ChatChannel:" + gone, "code": 4006}, "")
	for _, cl := range []*acClient{a2, b2} {
		cl.expect(wsWait, map[string]any{"type": "disconnect", "reason": "remote", "reconnect": true})
		cl.ExpectCloseCode(wsWait, 4006)
	}

	// Node 1 dies: the survivor posts a's close event, with the
	// identifiers a held, so the app can run unsubscribed for them.
	n1.Kill()
	var closeEv map[string]any
	WaitFor(t, 4*leaseTTL+wsWait, "a's node_lost close event", func() bool {
		for _, ev := range acEvents(t, p, a.id) {
			if ev["type"] == "close" {
				closeEv = ev
				return true
			}
		}
		return false
	})
	if ids, _ := closeEv["identifiers"].([]any); closeEv["by"] != "node_lost" || len(ids) != 1 || ids[0] != id {
		t.Fatalf("close event %v: want by node_lost with identifiers [%s]", closeEv, id)
	}
}

// Cablecar-Subscribe is ignored on an ActionCable accept: streams belong
// to subscriptions.
func testACSubscribeHeader(t *testing.T, e *acEnv) {
	ignored := "ign:" + uniqueID(t)
	cl := acDial(t, e.c, e.p, "subscribe="+url.QueryEscape(ignored))
	stream := "kept:" + uniqueID(t)
	id := acID("OneChannel", map[string]any{"stream": stream})
	cl.subscribe(id)
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": ignored, "data": `"no"`}, "")
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": stream, "data": `"yes"`}, "")
	cl.expect(wsWait, messageFrame(id, "yes"))
}

// JWT refusals of an ActionCable client take the refusal form: a missing
// token is unauthorized, an expired one token_expired; a token that
// expires while connected ends the connection with token_expired too.
func TestActionCableJWT(t *testing.T) {
	t.Parallel()
	p := startACApp(t)
	secret := "jwt-" + randomHex(16)
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: acConfig(map[string]any{
		"auth.jwt.required":    true,
		"auth.jwt.hmac_secret": secret,
		"auth.jwt.leeway":      "0s",
	})})
	token := func(exp time.Duration) string {
		return signJWT("HS256", "", []byte(secret), map[string]any{"sub": "u1", "exp": time.Now().Add(exp).Unix()})
	}
	for _, tc := range []struct{ query, reason string }{
		{"", "unauthorized"},
		{"token=" + token(-time.Minute), "token_expired"},
		{"token=not.a.token", "unauthorized"},
	} {
		ws, resp, err := DialWS(t, c.URL+"/cable?"+tc.query, nil, actioncable.V1Name, "actioncable-unsupported")
		if err != nil {
			t.Fatalf("%q: dial: %v %s; want 101 and a disconnect", tc.query, err, describeResponse(resp))
		}
		cl := &acClient{WSClient: ws, t: t}
		cl.expect(wsWait, map[string]any{"type": "disconnect", "reason": tc.reason, "reconnect": false})
		cl.ExpectClose(wsWait)
	}
	// Expiring while connected.
	ws, resp, err := DialWS(t, c.URL+"/cable?token="+token(2*time.Second), nil, actioncable.V1Name)
	if err != nil {
		t.Fatalf("dial: %v %s", err, describeResponse(resp))
	}
	cl := &acClient{WSClient: ws, t: t}
	cl.expect(wsWait, map[string]any{"type": "welcome"})
	cl.expect(wsWait+2*time.Second, map[string]any{"type": "disconnect", "reason": "token_expired", "reconnect": false})
	cl.ExpectCloseCode(wsWait, websocket.ClosePolicyViolation)
}
