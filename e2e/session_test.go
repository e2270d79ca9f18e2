package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/cablecar/cablecar/actioncable"
)

// Session restore (SPEC §10) against the real binary and testdata/acapp:
// an actioncable-v1-ext-json client that comes back with its sid within
// actioncable.session_ttl gets its subscriptions back without a webhook,
// and the app sees one continuous connection; one that does not has its
// close event posted once session_ttl passed.

const (
	sessTTL    = 2 * time.Second
	sessSecret = "session-restore-jwt-secret"
)

func sessConfig(extra map[string]any) map[string]any {
	cfg := acConfig(map[string]any{
		"actioncable.session_ttl": sessTTL.String(),
		"auth.jwt.hmac_secret":    sessSecret,
	})
	for k, v := range extra {
		cfg[k] = v
	}
	return cfg
}

// extDial connects as @anycable/web does (offering the ext protocol) with
// query added to a path tagged for the test, and returns the client and
// its welcome. The connection id is the app's, found by the tag, unless
// the session was restored (no accept reached the app): then it is "".
func extDial(t *testing.T, c *Cablecar, p *Puma, query string, header http.Header) (*acClient, map[string]any) {
	t.Helper()
	tag := uniqueID(t)
	target := c.URL + "/cable?tag=" + url.QueryEscape(tag)
	if query != "" {
		target += "&" + query
	}
	ws, resp, err := DialWS(t, target, header, actioncable.ExtName, actioncable.V1Name)
	if err != nil {
		t.Fatalf("dial: %v %s", err, describeResponse(resp))
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != actioncable.ExtName {
		t.Fatalf("101 names protocol %q, want %q", got, actioncable.ExtName)
	}
	cl := &acClient{WSClient: ws, t: t}
	welcome := cl.next(wsWait)
	if welcome["type"] != "welcome" {
		t.Fatalf("first frame %v, want the welcome", welcome)
	}
	if welcome["restored"] != true {
		WaitFor(t, wsWait, "the app's record of "+tag, func() bool {
			cl.id = acConnByTag(t, p, tag)
			return cl.id != ""
		})
	}
	return cl, welcome
}

func sidOf(t *testing.T, welcome map[string]any) string {
	t.Helper()
	sid, _ := welcome["sid"].(string)
	if len(sid) < 22 { // 128 bits in base64
		t.Fatalf("welcome %v: want a sid of at least 128 bits", welcome)
	}
	return sid
}

// acAccepts is every accept the app got whose path has s in it.
func acAccepts(t *testing.T, p *Puma, s string) []map[string]any {
	var conns struct {
		Conns []string `json:"conns"`
	}
	acGet(t, p, "/_conns", &conns)
	var out []map[string]any
	for _, id := range conns.Conns {
		var log acLog
		acGet(t, p, "/_events?conn="+url.QueryEscape(id), &log)
		for _, a := range log.Accepts {
			if strings.Contains(fmt.Sprint(a["path"]), s) {
				out = append(out, a)
			}
		}
	}
	return out
}

// closesOf is the close events the app got for id.
func closesOf(t *testing.T, p *Puma, id string) []map[string]any {
	var out []map[string]any
	for _, ev := range acEvents(t, p, id) {
		if ev["type"] == "close" {
			out = append(out, ev)
		}
	}
	return out
}

// eventN is n of an event id "<conn>:<n>".
func eventN(t *testing.T, ev map[string]any) int {
	t.Helper()
	var n int
	s := fmt.Sprint(ev["id"])
	if _, err := fmt.Sscanf(s[strings.LastIndexByte(s, ':')+1:], "%d", &n); err != nil {
		t.Fatalf("event id %q", s)
	}
	return n
}

// sessionSetup is a subscribed ext client: its subscription, stream and sid.
type sessionSetup struct {
	cl          *acClient
	ident, room string
	sid         string
}

func subscribedExt(t *testing.T, c *Cablecar, p *Puma, query string) sessionSetup {
	t.Helper()
	cl, welcome := extDial(t, c, p, query, nil)
	if welcome["restored"] != nil {
		t.Fatalf("a new session's welcome %v says restored", welcome)
	}
	room := uniqueID(t)
	ident := acID("ChatChannel", map[string]any{"room": room})
	cl.subscribe(ident)
	return sessionSetup{cl: cl, ident: ident, room: room, sid: sidOf(t, welcome)}
}

func TestSessionRestore(t *testing.T) {
	t.Parallel()
	p := startACApp(t)
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: sessConfig(nil)})
	env := &acEnv{p: p, c: c}
	for _, tc := range []struct {
		name string
		f    func(*testing.T, *acEnv)
	}{
		{"SameNode", testSessionSameNode},
		{"HeldCloseLapses", testSessionLapses},
		{"AppCloseNotRestorable", testSessionAppClose},
		{"OtherSub", testSessionOtherSub},
		{"SIDStripped", testSessionSIDStripped},
		{"PongIsLiveness", testSessionPong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.f(t, env)
		})
	}
}

func testSessionSameNode(t *testing.T, e *acEnv) {
	s := subscribedExt(t, e.c, e.p, "")
	if s.sid == s.cl.id || strings.Contains(s.cl.id, s.sid) {
		t.Fatalf("sid %q is the connection id", s.sid)
	}
	s.cl.command("message", s.ident, `{"action":"echo","n":1}`)
	s.cl.expect(wsWait, messageFrame(s.ident, map[string]any{"action": "echo", "n": float64(1)}))
	evs := acEvents(t, e.p, s.cl.id)
	lastN := eventN(t, evs[len(evs)-1])
	// The client goes away: a close frame, as a page reload sends.
	s.cl.CloseWith(wsWait, websocket.CloseGoingAway, "")

	cl, welcome := extDial(t, e.c, e.p, "sid="+url.QueryEscape(s.sid), nil)
	if welcome["restored"] != true {
		t.Fatalf("welcome %v: want restored", welcome)
	}
	if ids, _ := welcome["restored_ids"].([]any); len(ids) != 1 || ids[0] != s.ident {
		t.Fatalf("restored_ids %v, want [%s]", welcome["restored_ids"], s.ident)
	}
	if newSID := sidOf(t, welcome); newSID == s.sid {
		t.Fatal("a restore must issue a new sid")
	}
	cl.id = s.cl.id
	// Streams are back: a broadcast arrives without a subscribe.
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": "ChatChannel:" + s.room, "data": `{"n":2}`}, "")
	cl.expect(wsWait, extBroadcast(s.ident, "ChatChannel:"+s.room, map[string]any{"n": float64(2)}))
	// So is the channel_state, and the numbering goes on.
	cl.command("message", s.ident, `{"action":"echo","n":3}`)
	cl.expect(wsWait, messageFrame(s.ident, map[string]any{"action": "echo", "n": float64(3)}))
	evs = acEvents(t, e.p, cl.id)
	last := evs[len(evs)-1]
	if last["type"] != "perform" || eventN(t, last) != lastN+1 ||
		!strings.HasPrefix(fmt.Sprint(last["channel_state"]), "streams=ChatChannel:") {
		t.Fatalf("after the restore the app got %v; want the perform numbered %d with its channel_state", last, lastN+1)
	}
	if n := len(closesOf(t, e.p, cl.id)); n != 0 {
		t.Fatalf("the app got %d close events for a restored connection", n)
	}
	var log acLog
	acGet(t, e.p, "/_events?conn="+url.QueryEscape(cl.id), &log)
	if len(log.Accepts) != 1 {
		t.Fatalf("the app got %d accepts; want the first only", len(log.Accepts))
	}
	// The old sid restores nothing more: a new accept.
	again, w := extDial(t, e.c, e.p, "sid="+url.QueryEscape(s.sid), nil)
	if w["restored"] != nil || again.id == cl.id {
		t.Fatalf("old sid again: welcome %v, id %s; want a new session", w, again.id)
	}
	// The restored connection ends for good: one close, after session_ttl,
	// numbered on.
	cl.CloseWith(wsWait, websocket.CloseNormalClosure, "")
	var closes []map[string]any
	WaitFor(t, sessTTL+10*time.Second, "the close event", func() bool {
		closes = closesOf(t, e.p, cl.id)
		return len(closes) > 0
	})
	if closes[0]["by"] != "client" || eventN(t, closes[0]) != lastN+2 {
		t.Fatalf("close %v: want by client, numbered %d", closes[0], lastN+2)
	}
	if ids, _ := closes[0]["identifiers"].([]any); len(ids) != 1 || ids[0] != s.ident {
		t.Fatalf("close %v: want identifiers [%s]", closes[0], s.ident)
	}
}

func testSessionLapses(t *testing.T, e *acEnv) {
	s := subscribedExt(t, e.c, e.p, "")
	closed := time.Now()
	s.cl.CloseWith(wsWait, websocket.CloseNormalClosure, "")
	// Detached meanwhile: found, on no node.
	st, body := e.c.Admin("/connections/" + s.cl.id)
	var conn map[string]any
	_ = json.Unmarshal([]byte(body), &conn)
	if st != 200 || conn["detached"] != true || conn["node"] != nil {
		t.Fatalf("GET /connections/<id> while held: %d %s; want 200 detached, no node", st, body)
	}
	var closes []map[string]any
	WaitFor(t, sessTTL+10*time.Second, "the held close event", func() bool {
		closes = closesOf(t, e.p, s.cl.id)
		return len(closes) > 0
	})
	if waited := time.Since(closed); waited < sessTTL {
		t.Fatalf("close event posted after %v, before session_ttl %v", waited, sessTTL)
	}
	if closes[0]["by"] != "client" || closes[0]["code"] != float64(websocket.CloseNormalClosure) {
		t.Fatalf("held close %v: want by client, code 1000 (its first)", closes[0])
	}
	if st, _ := e.c.Admin("/connections/" + s.cl.id); st != 404 {
		t.Fatalf("GET /connections/<id> after the close: %d, want 404", st)
	}
	// Too late: a new session.
	cl, w := extDial(t, e.c, e.p, "sid="+url.QueryEscape(s.sid), nil)
	if w["restored"] != nil || cl.id == s.cl.id {
		t.Fatalf("restore after the close was posted: %v", w)
	}
}

func testSessionAppClose(t *testing.T, e *acEnv) {
	s := subscribedExt(t, e.c, e.p, "")
	s.cl.command("message", s.ident, `{"action":"close","code":4001,"reason":"bye"}`)
	// The app's close has its disconnect frame, and is posted at once.
	if f := s.cl.next(wsWait); f["type"] != "disconnect" || f["reason"] != "bye" {
		t.Fatalf("frame %v: want disconnect bye", f)
	}
	s.cl.ExpectCloseCode(wsWait, 4001)
	// Not held: never detached, and its close is posted without waiting.
	WaitFor(t, wsWait, "the connection gone", func() bool {
		st, body := e.c.Admin("/connections/" + s.cl.id)
		if strings.Contains(body, "detached") {
			t.Fatalf("a connection the app closed is held: %s", body)
		}
		return st == 404
	})
	var closes []map[string]any
	WaitFor(t, wsWait, "the close event", func() bool {
		closes = closesOf(t, e.p, s.cl.id)
		return len(closes) > 0
	})
	if closes[0]["by"] != "app" {
		t.Fatalf("close %v: want by app", closes[0])
	}
	if _, w := extDial(t, e.c, e.p, "sid="+url.QueryEscape(s.sid), nil); w["restored"] != nil {
		t.Fatalf("a session the app closed was restored: %v", w)
	}
}

func testSessionOtherSub(t *testing.T, e *acEnv) {
	alice := signJWT("HS256", "", []byte(sessSecret), map[string]any{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()})
	mallory := signJWT("HS256", "", []byte(sessSecret), map[string]any{"sub": 7, "exp": time.Now().Add(time.Hour).Unix()})
	s := subscribedExt(t, e.c, e.p, "token="+alice)
	s.cl.CloseWith(wsWait, websocket.CloseNormalClosure, "")
	// Another sub with alice's sid: a new session, asked of the app.
	cl, w := extDial(t, e.c, e.p, "token="+mallory+"&sid="+url.QueryEscape(s.sid), nil)
	if w["restored"] != nil || cl.id == s.cl.id {
		t.Fatalf("another sub restored the session: %v", w)
	}
	// Alice's own token (through the header this time) still restores it.
	h := http.Header{"X-AnyCable-Restore-Sid": {s.sid}}
	back, w := extDial(t, e.c, e.p, "token="+alice, h)
	if w["restored"] != true {
		t.Fatalf("alice's restore: welcome %v", w)
	}
	back.id = s.cl.id
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": "ChatChannel:" + s.room, "data": `"x"`}, "")
	back.expect(wsWait, extBroadcast(s.ident, "ChatChannel:"+s.room, "x"))
}

func testSessionSIDStripped(t *testing.T, e *acEnv) {
	tag := "strip-" + uniqueID(t)
	h := http.Header{"X-AnyCable-Restore-Sid": {"no-such-session"}}
	cl, w := extDial(t, e.c, e.p, "sid=no-such-sid&keep=1&x="+tag, h)
	if w["restored"] != nil {
		t.Fatalf("welcome %v", w)
	}
	acc := acAccepts(t, e.p, tag)
	if len(acc) != 1 {
		t.Fatalf("%d accepts", len(acc))
	}
	path := fmt.Sprint(acc[0]["path"])
	if strings.Contains(path, "sid=") || !strings.Contains(path, "keep=1") || acc[0]["restore_sid"] != nil {
		t.Fatalf("the app's accept: path %q, restore header %v; want sid stripped, the rest kept", path, acc[0]["restore_sid"])
	}
	// The events path too.
	ident := acID("ChatChannel", map[string]any{"room": tag})
	cl.subscribe(ident)
	if strings.Contains(e.c.Logs(), "no-such-sid") {
		t.Fatal("the sid was logged")
	}
}

func testSessionPong(t *testing.T, e *acEnv) {
	s := subscribedExt(t, e.c, e.p, "")
	s.cl.Send(`{"command":"pong"}`)
	s.cl.command("message", s.ident, `{"action":"echo","n":1}`)
	s.cl.expect(wsWait, messageFrame(s.ident, map[string]any{"action": "echo", "n": float64(1)}))
	for _, ev := range acEvents(t, e.p, s.cl.id) {
		if ev["type"] != "subscribe" && ev["type"] != "perform" {
			t.Fatalf("pong reached the app: %v", ev)
		}
	}
}

// A restored session keeps its presence (SPEC §10/§11): Cablecar re-joins
// it before leave_delay runs out, so the id never leaves, and the client's
// re-sent join for it is a no-op that never reaches the app.
func TestSessionRestoreKeepsPresence(t *testing.T) {
	t.Parallel()
	p := startACApp(t)
	const leaveDelay = time.Second
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: sessConfig(map[string]any{
		"presence.leave_delay": leaveDelay.String()})})
	s := subscribedExt(t, c, p, "")
	who := "u-" + s.room
	s.cl.command("message", s.ident, `{"action":"present","id":"`+who+`"}`)
	present := func() bool {
		st, body := c.Admin("/presence?channel=" + url.QueryEscape("ChatChannel:"+s.room))
		return st == 200 && strings.Contains(body, `"id":"`+who+`"`)
	}
	WaitFor(t, wsWait, "the presence join", present)

	s.cl.CloseWith(wsWait, websocket.CloseNormalClosure, "")
	cl, w := extDial(t, c, p, "sid="+url.QueryEscape(s.sid), nil)
	if w["restored"] != true {
		t.Fatalf("restore: %v", w)
	}
	cl.id = s.cl.id
	// Past leave_delay (and a margin), the id was never gone.
	until := time.Now().Add(leaveDelay + 2*time.Second)
	for time.Now().Before(until) {
		if !present() {
			t.Fatalf("%s left across the restore", who)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The re-sent join: no event; the echo after it shows the app has
	// everything sent before.
	cl.Send(`{"command":"join","identifier":` + strconv.Quote(s.ident) + `,"presence":{"id":"` + who + `"}}`)
	cl.command("message", s.ident, `{"action":"echo","n":9}`)
	cl.expect(wsWait, messageFrame(s.ident, map[string]any{"action": "echo", "n": float64(9)}))
	for _, ev := range acEvents(t, p, s.cl.id) {
		if ev["type"] == "join" {
			t.Fatalf("the re-sent join reached the app: %v", ev)
		}
	}
}

// With Redis: a session restores on another node, also after its node
// was killed; a killed node's held close is posted by a survivor.
func TestSessionRestoreRedis(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := startACApp(t)
	nodes := startNodes(t, p, 2, r.URL, sessConfig(nil))
	a, b := nodes[0], nodes[1]

	// Restore on the other node while the first lives.
	s := subscribedExt(t, a, p, "")
	s.cl.CloseWith(wsWait, websocket.CloseNormalClosure, "")
	// A restore on another node takes the session as Redis has it: wait
	// for node a's write of the ended one (batched, a few ms), as any real
	// client's reconnect delay does. One within those milliseconds gets
	// the session as last written (docs/actioncable.md). Two batched
	// writers stand between the close and this answer (the session's hold,
	// then the registry forgetting the connection's record): under a full
	// -race suite once it took more than wsWait, so the wait is longer.
	WaitFor(t, 3*wsWait, "the held session in Redis", func() bool {
		st, body := b.Admin("/connections/" + s.cl.id)
		return st == 200 && strings.Contains(body, `"detached":true`)
	})
	cl, w := extDial(t, b, p, "sid="+url.QueryEscape(s.sid), nil)
	if w["restored"] != true {
		t.Fatalf("restore on node b: %v", w)
	}
	cl.id = s.cl.id
	MustAdminPost(t, a, "/publish", map[string]any{"channel": "ChatChannel:" + s.room, "data": `"via b"`}, "")
	cl.expect(wsWait, extBroadcast(s.ident, "ChatChannel:"+s.room, "via b"))

	// Node a is killed: one client comes back on b, one never does.
	back := subscribedExt(t, a, p, "")
	gone := subscribedExt(t, a, p, "")
	a.Kill()
	killed := time.Now()
	cl2, w := extDial(t, b, p, "sid="+url.QueryEscape(back.sid), nil)
	if w["restored"] != true {
		t.Fatalf("restore after the node was killed: %v", w)
	}
	cl2.id = back.cl.id
	MustAdminPost(t, b, "/publish", map[string]any{"channel": "ChatChannel:" + back.room, "data": `"after kill"`}, "")
	cl2.expect(wsWait, extBroadcast(back.ident, "ChatChannel:"+back.room, "after kill"))
	cl2.command("message", back.ident, `{"action":"echo","n":1}`)
	cl2.expect(wsWait, messageFrame(back.ident, map[string]any{"action": "echo", "n": float64(1)}))

	var closes []map[string]any
	WaitFor(t, leaseTTL+sessTTL+20*time.Second, "the killed node's held close", func() bool {
		closes = closesOf(t, p, gone.cl.id)
		return len(closes) > 0
	})
	if time.Since(killed) < sessTTL || closes[0]["by"] != "node_lost" {
		t.Fatalf("close %v after %v: want by node_lost, after session_ttl", closes[0], time.Since(killed))
	}
	// The restored ones never got a close; the app got one accept each.
	for _, id := range []string{s.cl.id, back.cl.id} {
		if n := len(closesOf(t, p, id)); n != 0 {
			t.Fatalf("%s: %d close events for a restored connection", id, n)
		}
		var log acLog
		acGet(t, p, "/_events?conn="+url.QueryEscape(id), &log)
		if len(log.Accepts) != 1 {
			t.Fatalf("%s: %d accepts", id, len(log.Accepts))
		}
	}
	// The restored connection is found where it is, under its old id.
	st, body := b.Admin("/connections/" + back.cl.id)
	if st != 200 || !strings.Contains(body, `"channels":["ChatChannel:`+back.room+`"]`) {
		t.Fatalf("GET /connections/<restored id>: %d %s", st, body)
	}
}

// A SIGTERM restart of the only node: its clients come back with their
// sids and the app hears nothing — no accept, no subscribe, no close.
func TestSessionRestoreAfterRestart(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := startACApp(t)
	cfg := sessConfig(map[string]any{"shutdown_timeout": "5s"})
	a := startNodes(t, p, 1, r.URL, cfg)[0]
	const n = 20
	var clients []sessionSetup
	for range n {
		clients = append(clients, subscribedExt(t, a, p, ""))
	}
	eventsBefore := map[string]int{}
	for _, s := range clients {
		eventsBefore[s.cl.id] = len(acEvents(t, p, s.cl.id))
	}
	a.Signal(syscall.SIGTERM)
	for _, s := range clients {
		// No disconnect frame (the client would forget its sid): 1012.
		if code := s.cl.closeWithoutDisconnect(); code != websocket.CloseServiceRestart {
			t.Fatalf("close on shutdown: %d; want 1012", code)
		}
	}
	if _, err := a.Wait(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	b := startNodes(t, p, 1, r.URL, cfg)[0]
	for _, s := range clients {
		cl, w := extDial(t, b, p, "sid="+url.QueryEscape(s.sid), nil)
		if w["restored"] != true {
			t.Fatalf("restore after the restart: %v", w)
		}
		cl.id = s.cl.id
		MustAdminPost(t, b, "/publish", map[string]any{"channel": "ChatChannel:" + s.room, "data": `"back"`}, "")
		cl.expect(wsWait, extBroadcast(s.ident, "ChatChannel:"+s.room, "back"))
	}
	// Nothing is held any more, so nothing will be posted for them.
	if v, err := r.Do("ZCARD", "cablecar:~{sess}:held"); err != nil || v != int64(0) {
		t.Fatalf("held closes left after every client came back: %v %v", v, err)
	}
	for _, s := range clients {
		var log acLog
		acGet(t, p, "/_events?conn="+url.QueryEscape(s.cl.id), &log)
		evs := acEvents(t, p, s.cl.id)
		if len(log.Accepts) != 1 || len(evs) != eventsBefore[s.cl.id] {
			t.Fatalf("%s: the app got %d accepts and events %v; want 1 accept and nothing new", s.cl.id, len(log.Accepts), evs[eventsBefore[s.cl.id]:])
		}
	}
	if acc := acAccepts(t, p, "sid="); len(acc) > 0 {
		t.Fatalf("an accept carried a sid: %v", acc[0])
	}
}

// closeWithoutDisconnect reads until the server's close frame and returns
// its code, failing on a disconnect frame before it.
func (cl *acClient) closeWithoutDisconnect() int {
	cl.t.Helper()
	_ = cl.Conn.SetReadDeadline(time.Now().Add(wsWait))
	for {
		_, data, err := cl.Conn.ReadMessage()
		if ce, ok := err.(*websocket.CloseError); ok {
			return ce.Code
		}
		if err != nil {
			cl.t.Fatalf("no close frame: %v", err)
		}
		if strings.Contains(string(data), `"disconnect"`) {
			cl.t.Fatalf("a restorable ext client got %s before its close", data)
		}
	}
}

// extBroadcast is a broadcast as an ext client gets it: with the stream it
// came on (SPEC §10), and no epoch or offset when the channel keeps no
// history.
func extBroadcast(id, stream string, msg any) map[string]any {
	f := messageFrame(id, msg)
	f["stream_id"] = stream
	return f
}
