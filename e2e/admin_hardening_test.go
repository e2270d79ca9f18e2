package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The admin listener against web pages, GET /connections/<id>, readiness
// through a broker outage, and the start-up checks of the admin
// configuration (SPEC §4, §5, §7).

// adminDo sends method path to c's admin listener with body (JSON unless
// hdr says otherwise) and the headers in hdr; "Host" in hdr replaces the
// request's Host. It returns the status and the body.
func adminDo(t *testing.T, c *Cablecar, method, path, body string, hdr map[string]string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.AdminURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.admin.Do(req)
	if err != nil {
		t.Fatalf("%s %s on the admin listener: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(data)
}

// TestAdminRefusesWebPages: what a page open in a browser beside Cablecar
// could send to the admin listener — a text/plain POST (no preflight), a
// request from its own Origin, a DNS-rebound Host — reaches no client.
func TestAdminRefusesWebPages(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream})
	keyed := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{"admin.api_key": "adm1n-k3y"}})
	ch := channel("webpage")
	ws, _ := ConnectWS(t, c, p, target("/ws/chat/webpage", "subscribe", ch), nil)
	wsk, _ := ConnectWS(t, keyed, p, target("/ws/chat/webpage", "subscribe", ch), nil)
	msg := `{"channel":"` + ch + `","data":"from a web page"}`
	_, port, _ := net.SplitHostPort(c.AdminAddr)

	for _, tc := range []struct {
		name   string
		c      *Cablecar
		key    string
		hdr    map[string]string
		status int
	}{
		{"text/plain body", c, "", map[string]string{"Content-Type": "text/plain;charset=UTF-8"}, 415},
		{"form body", c, "", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415},
		{"text/plain body with the key", keyed, "adm1n-k3y", map[string]string{"Content-Type": "text/plain"}, 415},
		{"another site's Origin", c, "", map[string]string{"Origin": "http://evil.example"}, 403},
		{"another site's Origin with the key", keyed, "adm1n-k3y", map[string]string{"Origin": "http://evil.example"}, 403},
		{"Origin null", c, "", map[string]string{"Origin": "null"}, 403},
		{"a rebound DNS name", c, "", map[string]string{"Host": "evil.example:" + port, "Origin": "http://evil.example:" + port}, 403},
		{"a rebound DNS name without Origin", c, "", map[string]string{"Host": "evil.example"}, 403},
	} {
		hdr := map[string]string{}
		for k, v := range tc.hdr {
			hdr[k] = v
		}
		if tc.key != "" {
			hdr["Authorization"] = "Bearer " + tc.key
		}
		code, body := adminDo(t, tc.c, "POST", "/publish", msg, hdr)
		if code != tc.status {
			t.Errorf("%s: %d %q, want %d", tc.name, code, body, tc.status)
		}
		checkJSONError(t, tc.name, code, body)
	}
	if code, body := adminDo(t, c, "GET", "/metrics", "", map[string]string{"Host": "evil.example"}); code != 403 {
		t.Errorf("GET /metrics by a rebound DNS name: %d %.100q, want 403", code, body)
	}

	// What callers do — by address, by localhost, by a DNS name with the
	// key — works; and is the first thing the clients get.
	MustAdminPost(t, c, "/publish", map[string]any{"channel": ch, "data": "by address"}, "")
	if code, body := adminDo(t, c, "POST", "/publish", `{"channel":"`+ch+`","data":"by localhost"}`,
		map[string]string{"Host": "localhost:" + port, "Origin": "http://localhost:" + port}); code != 200 || body != "{\"published\":1}\n" {
		t.Errorf("by localhost, from the listener's own origin: %d %q, want 200 {\"published\":1}", code, body)
	}
	if code, body := adminDo(t, keyed, "POST", "/publish", `{"channel":"`+ch+`","data":"by name with the key"}`,
		map[string]string{"Host": "cablecar.internal", "Authorization": "Bearer adm1n-k3y"}); code != 200 {
		t.Errorf("by a DNS name with the key: %d %q", code, body)
	}
	ws.ExpectText(wsWait, "by address")
	ws.ExpectText(wsWait, "by localhost")
	wsk.ExpectText(wsWait, "by name with the key")

	// Without callback.secret, the operator is told at start-up.
	c.WaitLog(5*time.Second, "the warning that callbacks are unsigned", func(l LogLine) bool {
		return l.Str("level") == "warn" && strings.Contains(l.Str("message"), "callbacks are unsigned")
	})
	signed := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{"callback.secret": wsSecret}})
	signed.WaitLog(5*time.Second, "cablecar ready", func(l LogLine) bool { return l.Str("message") == "cablecar ready" })
	if strings.Contains(signed.Logs(), "callbacks are unsigned") {
		t.Error("warned that callbacks are unsigned although callback.secret is set")
	}
}

// connInfo is GET /connections/<id>'s answer.
type connInfo struct {
	ID       string   `json:"id"`
	Node     string   `json:"node"`
	Channels []string `json:"channels"`
	Detached bool     `json:"detached"`
}

// lookupConn GETs /connections/<id> from c: the status, and the answer
// when 200.
func lookupConn(t *testing.T, c *Cablecar, id string) (int, connInfo) {
	t.Helper()
	code, body, err := get(c.admin, c.AdminURL+"/connections/"+id, 5*time.Second)
	if err != nil {
		t.Fatalf("GET /connections/%s: %v", id, err)
	}
	var info connInfo
	if code == 200 {
		if err := json.Unmarshal([]byte(body), &info); err != nil || info.Channels == nil {
			t.Fatalf("GET /connections/%s: 200 %q, want {\"id\", \"node\", \"channels\": […]}", id, body)
		}
	} else {
		checkJSONError(t, "GET /connections/"+id, code, body)
	}
	return code, info
}

// waitConn waits until GET /connections/<id> on c answers want (200 with
// these channels, or 404 when channels is nil).
func waitConn(t *testing.T, c *Cablecar, id, node string, channels []string) {
	t.Helper()
	want := 404
	if channels != nil {
		want = 200
	}
	var code int
	var info connInfo
	if !poll(brokerWait, func() bool {
		code, info = lookupConn(t, c, id)
		return code == want && (want == 404 || (info.ID == id && info.Node == node && slices.Equal(info.Channels, channels)))
	}) {
		t.Fatalf("GET /connections/%s on %s: %d %+v, want %d with node %s and channels %v", id, c.AdminAddr, code, info, want, node, channels)
	}
}

// nodeOf is the node id a connection id carries ("c_" + 8 characters).
func nodeOf(t *testing.T, id string) string {
	t.Helper()
	if len(id) < 10 || !strings.HasPrefix(id, "c_") {
		t.Fatalf("connection id %q does not name its node", id)
	}
	return id[2:10]
}

// TestAdminConnectionLookup: on one node with the in-memory broker, a
// connection is found with its channels while it is open, and not once it
// has closed.
func TestAdminConnectionLookup(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream})
	b, c2 := channel("look-b"), channel("look-a")
	ws, id := ConnectWS(t, c, p, target("/ws/chat/lookup", "subscribe", b+","+c2), nil)
	node := nodeOf(t, id)
	waitConn(t, c, id, node, []string{c2, b}) // sorted
	ws.Send("unsub:" + b)
	waitConn(t, c, id, node, []string{c2})

	for _, other := range []string{"c_" + node + "AAAAAAAAAAAAAAAA", "no-such-connection", "c_"} {
		if code, _ := lookupConn(t, c, other); code != 404 {
			t.Errorf("GET /connections/%s: %d, want 404", other, code)
		}
	}
	ws.CloseWith(wsWait, 1000, "bye")
	waitConn(t, c, id, node, nil)
}

// TestAdminConnectionLookupAcrossNodes: with Redis, any node finds a
// connection open on another, with the node holding it and its channels.
func TestAdminConnectionLookupAcrossNodes(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 2, r.URL, nil)
	ch := channel("look-x")
	ws, id := joinWS(t, nodes[0], p, "/ws/chat/lookupx", ch)
	node := nodeOf(t, id)
	for _, c := range nodes {
		waitConn(t, c, id, node, []string{ch})
	}
	ch2 := channel("look-y")
	ws.Send("sub:" + ch2)
	want := []string{ch, ch2}
	slices.Sort(want)
	waitConn(t, nodes[1], id, node, want)

	_, id1 := joinWS(t, nodes[1], p, "/ws/chat/lookupx")
	if nodeOf(t, id1) == node {
		t.Fatalf("both connections on node %s", node)
	}
	waitConn(t, nodes[0], id1, nodeOf(t, id1), []string{})

	ws.CloseWith(wsWait, 1000, "bye")
	for _, c := range nodes {
		waitConn(t, c, id, node, nil)
	}

	// A connection whose app wants no close event (Cablecar-Events
	// without close) is found from the other node too, and not once it
	// is gone.
	quiet, idq := joinWS(t, nodes[0], p, WithQuery("/ws/chat/lookupq", "events", "message"), ch)
	nodeq := nodeOf(t, idq)
	for _, c := range nodes {
		waitConn(t, c, idq, nodeq, []string{ch})
	}
	quiet.CloseWith(wsWait, 1000, "bye")
	for _, c := range nodes {
		waitConn(t, c, idq, nodeq, nil)
	}
}

// TestReadyzThroughBrokerOutage: Redis away shows in /readyz, which stays
// 200 (plain HTTP and accepts still work), one line per dependency.
func TestReadyzThroughBrokerOutage(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	c := startNodes(t, p, 1, r.URL, nil)[0]
	if code, body := readyBody(c); code != 200 || body != "ready\napp: ok\nbroker: ok\n" {
		t.Fatalf("/readyz with Redis up: %d %q", code, body)
	}
	r.Stop()
	var code int
	var body string
	WaitFor(t, 15*time.Second, "/readyz to report the broker down", func() bool {
		code, body = readyBody(c)
		return strings.Contains(body, "\nbroker: ") && !strings.Contains(body, "\nbroker: ok\n")
	})
	t.Logf("/readyz with Redis stopped: %d %q", code, body)
	if code != 200 || !strings.HasPrefix(body, "ready\napp: ok\nbroker: ") || strings.Count(body, "\n") != 3 {
		t.Errorf("/readyz with Redis stopped: %d %q, want 200 ready, app: ok, broker: <error>", code, body)
	}
	r.Restart()
	WaitFor(t, 20*time.Second, "/readyz broker: ok after Redis came back", func() bool {
		code, body = readyBody(c)
		return code == 200 && body == "ready\napp: ok\nbroker: ok\n"
	})
}

// TestAdminListenNeedsKey: an admin listener on every interface without
// admin.api_key stops start-up, exit 2, one line naming both keys.
func TestAdminListenNeedsKey(t *testing.T) {
	t.Parallel()
	admin := "0.0.0.0:" + strconv.Itoa(FreePort(t))
	cfg := harnessConfig("127.0.0.1:"+strconv.Itoa(FreePort(t)), admin, "http://127.0.0.1:3")
	code, _, stderr := RunCablecar(t, nil, "-config", WriteConfig(t, cfg))
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "admin.listen") || !strings.Contains(lines[0], admin) ||
		!strings.Contains(lines[0], "admin.api_key must be set") {
		t.Fatalf("admin.listen %s without a key: exit %d, stderr:\n%s\nwant exit 2 and one line naming admin.listen and admin.api_key", admin, code, stderr)
	}
	if code, _, stderr := RunCablecar(t, []string{"CABLECAR_ADMIN_API_KEY=k"}, "-check", "-config", WriteConfig(t, cfg)); code != 0 {
		t.Errorf("admin.listen %s with a key: exit %d:\n%s", admin, code, stderr)
	}
}

// TestConfigCheckMasksURLs: -check prints no password of a URL's userinfo
// and no value of a query parameter that looks like a secret.
func TestConfigCheckMasksURLs(t *testing.T) {
	t.Parallel()
	cfg := harnessConfig("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3")
	mergeConfig(cfg, map[string]any{
		"auth.jwt.jwks_url": "https://jwksuser:S3CRET-PASS@keys.example/jwks.json?api_key=S3CRET-KEY&v=2;access_token=S3CRET-TOKEN",
		"broker.url":        "redis://default:S3CRET-REDIS@127.0.0.1:1/0",
		"broker.prefix":     "masked:",
	})
	code, stdout, stderr := RunCablecar(t, []string{"CABLECAR_CALLBACK_SECRET=S3CRET-CALLBACK"}, "-check", "-config", WriteConfig(t, cfg))
	if code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, stderr)
	}
	out := stdout + stderr
	if strings.Contains(out, "S3CRET") {
		t.Errorf("-check shows a secret:\n%s", out)
	}
	for _, want := range []string{"https://jwksuser:********@keys.example/jwks.json?api_key=********&v=2;access_token=********",
		"redis://default:********@127.0.0.1:1/0"} {
		if !strings.Contains(out, want) {
			t.Errorf("-check does not show %s:\n%s", want, out)
		}
	}
}
