package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// Presence (SPEC §11), end to end: the accept's Cablecar-Presence and a
// reply's presence make ids join; subscribers that asked hear joins and
// leaves; admin GET /presence reads them; the app's presence callback gets
// each join and leave, retried, in order, with stable ids. On one node and
// on two sharing Redis: the same id on two connections, a reconnect before
// the old socket is found dead (same node, other node: never a leave), a
// node killed with kill -9 (its ids leave once its lease lapses), a Redis
// restart (no spurious leaves).
//
//	go test -race -count=1 -run 'TestPresence' ./e2e/

// presencePath is the callback path; the app fails each event's first two
// POSTs, so every event is retried.
const presencePath = "/ws/_presence?fail=2"

// presenceCallbacks is what the app's presence callback recorded.
type presenceCallbacks struct {
	Posts []struct {
		Events    []presenceEvent `json:"events"`
		Signature string          `json:"signature"`
		Failed    bool            `json:"failed"`
	} `json:"posts"`
	Attempts map[string]int `json:"attempts"`
}

type presenceEvent struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Channel string          `json:"channel"`
	Who     string          `json:"presence_id"`
	Info    json.RawMessage `json:"info"`
	At      int64           `json:"at"`
}

func readPresenceCallbacks(t *testing.T, p *Puma) presenceCallbacks {
	t.Helper()
	resp, err := p.Client().Get(p.URL + "/ws/_presence")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var pc presenceCallbacks
	if err := json.Unmarshal(body, &pc); err != nil {
		t.Fatalf("presence log %q: %v", body, err)
	}
	return pc
}

// taken are the events the app took (answered 2xx), in order, deduped by
// id, for one channel: "join u1", "leave u1"…
func (pc presenceCallbacks) taken(channel string) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range pc.Posts {
		if p.Failed {
			continue
		}
		for _, ev := range p.Events {
			if ev.Channel == channel && !seen[ev.ID] {
				seen[ev.ID] = true
				out = append(out, ev.Type+" "+ev.Who)
			}
		}
	}
	return out
}

// perID groups "type id" entries by id, keeping their order: the order
// the contract gives is per (channel, id) only.
func perID(entries []string) string {
	by := map[string][]string{}
	var ids []string
	for _, e := range entries {
		typ, id, _ := strings.Cut(e, " ")
		if by[id] == nil {
			ids = append(ids, id)
		}
		by[id] = append(by[id], typ)
	}
	slices.Sort(ids)
	var out []string
	for _, id := range ids {
		out = append(out, id+":"+strings.Join(by[id], ","))
	}
	return strings.Join(out, " ")
}

// waitTaken waits until the app took exactly want for channel, in want's
// order per id.
func waitTaken(t *testing.T, p *Puma, channel string, want ...string) presenceCallbacks {
	t.Helper()
	var pc presenceCallbacks
	if !poll(20*time.Second, func() bool {
		pc = readPresenceCallbacks(t, p)
		return perID(pc.taken(channel)) == perID(want)
	}) {
		t.Fatalf("presence callbacks on %s: the app took %q, want %q", channel, pc.taken(channel), want)
	}
	return pc
}

type presenceSnapshot struct {
	Channel     string `json:"channel"`
	Connections int    `json:"connections"`
	Members     []struct {
		ID          string          `json:"id"`
		Info        json.RawMessage `json:"info"`
		Connections int             `json:"connections"`
	} `json:"members"`
}

func readPresence(t *testing.T, c *Cablecar, channel string) presenceSnapshot {
	t.Helper()
	status, body := c.Admin("/presence?channel=" + channel)
	if status != 200 {
		t.Fatalf("GET /presence: %d %s", status, body)
	}
	var s presenceSnapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("GET /presence %q: %v", body, err)
	}
	return s
}

// members is "id:connections" per member, sorted.
func (s presenceSnapshot) members() string {
	var out []string
	for _, m := range s.Members {
		out = append(out, fmt.Sprintf("%s:%d", m.ID, m.Connections))
	}
	return strings.Join(out, ",")
}

func waitMembers(t *testing.T, c *Cablecar, channel, want string) presenceSnapshot {
	t.Helper()
	var s presenceSnapshot
	if !poll(20*time.Second, func() bool {
		s = readPresence(t, c, channel)
		return s.members() == want
	}) {
		t.Fatalf("GET /presence?channel=%s: members %q, want %q", channel, s.members(), want)
	}
	return s
}

// presenceTarget is an accept path subscribed to channel holding id there.
func presenceTarget(path, channel, id string, events bool) string {
	tgt := WithQuery(path, "subscribe", channel)
	tgt = WithQuery(tgt, "presence", fmt.Sprintf(`{"channel":%q,"id":%q,"info":{"name":%q}}`, channel, id, id))
	if events {
		tgt = WithQuery(tgt, "presence_events", "on")
	}
	return WithQuery(tgt, "first", "ready")
}

func dialPresence(t *testing.T, c *Cablecar, p *Puma, path, channel, id string, events bool) *WSClient {
	t.Helper()
	ws, _ := ConnectWS(t, c, p, presenceTarget(path, channel, id, events), nil)
	ws.ExpectText(wsWait, "ready")
	return ws
}

// nodesHolding counts the nodes whose field for id is in channel's
// presence hash in Redis (<prefix>~presence:{<channel>}, <node>|<id>).
func nodesHolding(t *testing.T, r *Redis, channel, id string) int {
	t.Helper()
	keys, err := redisStrings(r.Do("HKEYS", defaultPrefix+"~presence:{"+channel+"}"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range keys {
		if strings.HasSuffix(k, "|"+id) && !strings.HasPrefix(k, "#|") && !strings.HasPrefix(k, "!") {
			n++
		}
	}
	return n
}

// drop ends a client's socket without a close frame, as a lost network does.
func drop(ws *WSClient) { ws.Conn.NetConn().Close() }

func TestPresenceOneNode(t *testing.T) {
	p := StartPuma(t, PumaOptions{})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"presence.leave_delay":   "1s",
		"presence.callback_path": presencePath,
		"callback.secret":        "presence-secret",
		// Clients are not read while others are checked: heartbeats are
		// not what this tests.
		"websocket.pong_timeout": "60s",
	}})
	const ch = "room:p1"

	watcher := dialPresence(t, c, p, "/ws/pres-watch", ch, "watcher", true)
	watcher.ExpectText(wsWait, `{"presence":"join","channel":"room:p1","id":"watcher","info":{"name":"watcher"}}`)

	// The same id on two connections: one join, two connections.
	a := dialPresence(t, c, p, "/ws/pres-a", ch, "u1", false)
	watcher.ExpectText(wsWait, `{"presence":"join","channel":"room:p1","id":"u1","info":{"name":"u1"}}`)
	b := dialPresence(t, c, p, "/ws/pres-b", ch, "u1", false)
	s := waitMembers(t, c, ch, "u1:2,watcher:1")
	if s.Connections != 3 {
		t.Fatalf("connections %d, want 3 (every subscribed connection)", s.Connections)
	}

	// A reconnect race: both drop, a new connection comes within
	// leave_delay; never a leave.
	drop(a)
	drop(b)
	a2 := dialPresence(t, c, p, "/ws/pres-a2", ch, "u1", false)
	waitMembers(t, c, ch, "u1:1,watcher:1")

	// An explicit leave by the last holder is at once (leave_delay does
	// not apply). The app took one join and one leave of u1: the race made
	// none.
	a2.Send("leave:" + ch)
	watcher.ExpectText(wsWait, `{"presence":"leave","channel":"room:p1","id":"u1","info":{"name":"u1"}}`)
	pc := waitTaken(t, p, ch, "join watcher", "join u1", "leave u1")

	// Every event was retried (the app failed each twice), same id, and
	// signed.
	for id, n := range pc.Attempts {
		if n != 3 {
			t.Errorf("event %s was POSTed %d times, want 3 (2 failures, then taken)", id, n)
		}
	}
	for _, post := range pc.Posts {
		if !strings.HasPrefix(post.Signature, "t=") {
			t.Errorf("presence callback without a signature: %+v", post)
		}
	}

	// A reply's join, and a drop that waits leave_delay.
	a2.Send("join:" + ch + ":u2")
	watcher.ExpectText(wsWait, `{"presence":"join","channel":"room:p1","id":"u2","info":{"via":"reply"}}`)
	start := time.Now()
	drop(a2)
	watcher.ExpectText(5*time.Second, `{"presence":"leave","channel":"room:p1","id":"u2","info":{"via":"reply"}}`)
	if d := time.Since(start); d < time.Second {
		t.Errorf("a drop left after %v, before leave_delay (1s)", d)
	}
	waitTaken(t, p, ch, "join watcher", "join u1", "leave u1", "join u2", "leave u2")
}

// TestPresenceTwoNodes runs two nodes over one Redis.
func TestPresenceTwoNodes(t *testing.T) {
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 2, r.URL, map[string]any{
		"presence.leave_delay":   "1s",
		"presence.callback_path": presencePath,
	})
	a, b := nodes[0], nodes[1]

	t.Run("SameIDTwoNodes", func(t *testing.T) {
		const ch = "room:two1"
		wa := dialPresence(t, a, p, "/ws/two1-a", ch, "u1", true)
		wa.ExpectText(wsWait, `{"presence":"join","channel":"room:two1","id":"u1","info":{"name":"u1"}}`)
		wb := dialPresence(t, b, p, "/ws/two1-b", ch, "u1", true)
		s := waitMembers(t, b, ch, "u1:2")
		if s.Connections != 2 {
			t.Fatalf("connections %d, want 2", s.Connections)
		}
		drop(wa)
		waitMembers(t, a, ch, "u1:1")
		wb.Send("leave:" + ch)
		waitTaken(t, p, ch, "join u1", "leave u1")
	})

	t.Run("ReconnectOtherNode", func(t *testing.T) {
		const ch = "room:two2"
		// The device on A goes silent (not read, not closed): A has not
		// found it dead when it reconnects to B.
		old := dialPresence(t, a, p, "/ws/two2-old", ch, "dev", false)
		waitTaken(t, p, ch, "join dev")
		fresh := dialPresence(t, b, p, "/ws/two2-new", ch, "dev", false)
		waitMembers(t, a, ch, "dev:2")
		// Now A finds the old socket gone; leave_delay later it lets go.
		drop(old)
		WaitFor(t, 20*time.Second, "node A to let dev go", func() bool { return nodesHolding(t, r, ch, "dev") == 1 })
		waitMembers(t, a, ch, "dev:1")
		// A marker decided on A after that: A's poster posts in the order A
		// decided, so once the marker is taken, a leave of dev would have
		// been too.
		marker := dialPresence(t, a, p, "/ws/two2-marker", ch, "marker", false)
		waitTaken(t, p, ch, "join dev", "join marker")
		_ = fresh
		_ = marker
	})

	t.Run("ReconnectSameNode", func(t *testing.T) {
		const ch = "room:two3"
		old := dialPresence(t, a, p, "/ws/two3-old", ch, "dev", false)
		waitTaken(t, p, ch, "join dev")
		fresh := dialPresence(t, a, p, "/ws/two3-new", ch, "dev", false)
		drop(old)
		// The fresh connection came before the old one went: A never held
		// dev with no connection, so no leave_delay ran.
		waitMembers(t, b, ch, "dev:1")
		marker := dialPresence(t, a, p, "/ws/two3-marker", ch, "marker", false)
		waitTaken(t, p, ch, "join dev", "join marker")
		_, _ = fresh, marker
	})

	t.Run("RedisRestart", func(t *testing.T) {
		const ch = "room:two4"
		wa := dialPresence(t, a, p, "/ws/two4-a", ch, "ua", false)
		wb := dialPresence(t, b, p, "/ws/two4-b", ch, "ub", false)
		waitTaken(t, p, ch, "join ua", "join ub")
		r.Restart()
		// Rebuilt by the nodes, with no leave and no second join.
		waitMembers(t, b, ch, "ua:1,ub:1")
		// What is decided after the restart is decided once.
		wa.Send("leave:" + ch)
		waitTaken(t, p, ch, "join ua", "join ub", "leave ua")
		wb.Send("leave:" + ch)
		waitTaken(t, p, ch, "join ua", "join ub", "leave ua", "leave ub")
	})

	t.Run("KillNode", func(t *testing.T) {
		const ch = "room:two5"
		dialPresence(t, a, p, "/ws/two5-solo", ch, "solo", false)
		dialPresence(t, a, p, "/ws/two5-both", ch, "both", false)
		dialPresence(t, b, p, "/ws/two5-both-b", ch, "both", false)
		waitMembers(t, b, ch, "both:2,solo:1")
		waitTaken(t, p, ch, "join both", "join solo")
		a.Kill()
		// Once A's lease lapses, B takes its presence out: solo leaves,
		// both stays (B holds it).
		waitMembers(t, b, ch, "both:1")
		waitTaken(t, p, ch, "join both", "join solo", "leave solo")
	})
}
