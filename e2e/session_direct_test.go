package e2e

import (
	neturl "net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/fasthttp/websocket"
)

// Admin /send and /close reach a session restored on a node other than
// the one its connection id names (SPEC §4, §10): asked of that first
// node while it lives, of a third node, and after the first node was
// killed; a connection that is gone is still 404.
func TestSessionDirectRestored(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	testSessionDirect(t, r.URL, func(ch string) (bool, error) {
		v, err := r.Do("PUBSUB", "NUMSUB", ch)
		l, _ := v.([]any)
		return err == nil && len(l) == 2 && l[1] != int64(0), err
	})
}

// The same on a Redis Cluster, where node channels are sharded.
func TestSessionDirectRestoredCluster(t *testing.T) {
	t.Parallel()
	rc := StartRedisCluster(t)
	testSessionDirect(t, rc.URL, func(ch string) (bool, error) {
		on, err := rc.ShardChannels(ch)
		return len(on) > 0, err
	})
}

// testSessionDirect runs the scenario on the Redis at url; listened says
// whether a node listens on a node channel.
func testSessionDirect(t *testing.T, url string, listened func(ch string) (bool, error)) {
	p := startACApp(t)
	nodes := startNodes(t, p, 3, url, sessConfig(nil))
	a, b, c := nodes[0], nodes[1], nodes[2]

	// moveTo restores s's session on node n after its socket on a ended.
	moveTo := func(s sessionSetup, n *Cablecar) *acClient {
		t.Helper()
		cl, w := extDial(t, n, p, "sid="+neturl.QueryEscape(s.sid), nil)
		if w["restored"] != true {
			t.Fatalf("restore: %v", w)
		}
		cl.id = s.cl.id
		return cl
	}
	// closeOnA ends s's socket on a and waits for a to hold its session:
	// until a has seen the socket end, a command that reaches a finds
	// the old connection there.
	closeOnA := func(s sessionSetup) {
		t.Helper()
		s.cl.CloseWith(wsWait, websocket.CloseNormalClosure, "")
		WaitFor(t, wsWait, "a to hold the session of "+s.cl.id, func() bool {
			st, body := a.Admin("/connections/" + s.cl.id)
			return st == 200 && strings.Contains(body, `"detached":true`)
		})
	}

	// Restored on b while a, whose id it keeps, lives.
	s1, s2 := subscribedExt(t, a, p, ""), subscribedExt(t, a, p, "")
	closeOnA(s1)
	closeOnA(s2)
	cl1, cl2 := moveTo(s1, b), moveTo(s2, b)
	for i, via := range []*Cablecar{a, c, b} {
		MustAdminPost(t, via, "/send", map[string]any{"connection": cl1.id, "identifier": s1.ident, "data": `{"via":` + strconv.Itoa(i) + `}`}, "")
		cl1.expect(wsWait, messageFrame(s1.ident, map[string]any{"via": float64(i)}))
	}
	MustAdminPost(t, a, "/close", map[string]any{"connection": cl2.id, "code": 4001, "reason": "via a", "reconnect": false}, "")
	cl2.expect(wsWait, map[string]any{"type": "disconnect", "reason": "remote", "reconnect": false})
	cl2.ExpectCloseCode(wsWait, 4001)

	// a is killed: one client comes back on b, one never does.
	back, gone := subscribedExt(t, a, p, ""), subscribedExt(t, a, p, "")
	a.Kill()
	// Redis has seen a go: no one listens on its node channel.
	aNode := s1.cl.id[2:10]
	WaitFor(t, wsWait, "Redis to drop a's subscription", func() bool {
		on, err := listened("cablecar:~node:" + aNode)
		return err == nil && !on
	})
	cl3 := moveTo(back, b)
	for _, cl := range []struct {
		cl    *acClient
		ident string
	}{{cl1, s1.ident}, {cl3, back.ident}} {
		MustAdminPost(t, c, "/send", map[string]any{"connection": cl.cl.id, "identifier": cl.ident, "data": `"after kill"`}, "")
		cl.cl.expect(wsWait, messageFrame(cl.ident, "after kill"))
	}
	for _, path := range []string{"/send", "/close"} {
		body := map[string]any{"connection": gone.cl.id}
		if path == "/send" {
			body["data"] = "x"
		}
		if st, resp := AdminPost(t, c, path, body, ""); st != 404 {
			t.Fatalf("%s to a connection that is gone: %d %s; want 404", path, st, resp)
		}
	}
	MustAdminPost(t, c, "/close", map[string]any{"connection": cl3.id, "code": 4002, "reason": "bye", "reconnect": false}, "")
	cl3.expect(wsWait, map[string]any{"type": "disconnect", "reason": "remote", "reconnect": false})
	cl3.ExpectCloseCode(wsWait, 4002)
	MustAdminPost(t, b, "/close", map[string]any{"connection": cl1.id, "code": 4003}, "")
	cl1.expect(wsWait, map[string]any{"type": "disconnect", "reason": "remote", "reconnect": true})
	cl1.ExpectCloseCode(wsWait, 4003)

	// The app closed them: each close is posted at once, by app, once.
	for _, id := range []string{cl1.id, cl2.id, cl3.id} {
		var closes []map[string]any
		WaitFor(t, wsWait, "the close event of "+id, func() bool {
			closes = closesOf(t, p, id)
			return len(closes) > 0
		})
		if len(closes) != 1 || closes[0]["by"] != "app" {
			t.Fatalf("%s: close events %v; want one, by app", id, closes)
		}
	}
	// Closed, they are gone: 404 like any other, once b has dropped the
	// session (written in its next batch).
	WaitFor(t, wsWait, "404 for a restored connection the app closed", func() bool {
		st, _ := AdminPost(t, c, "/send", map[string]any{"connection": cl3.id, "data": "x"}, "")
		return st == 404
	})
}
