package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Ruby gem (ruby/) against the real sidecar: testdata/gemapp runs on
// the gem under real Puma, Cablecar signs and posts to it, and clients see
// what the gem's handlers asked for. The gem's own tests (make ruby-test)
// check it without a sidecar; these check that both ends agree on the wire:
// signatures, accept headers, replies, state, the Redis envelope.

const gemWait = 10 * time.Second

type gemApp struct {
	puma   *Puma
	secret string
}

// startGemApp starts Puma on the gem app, on a port chosen first so that
// the sidecar in front of it can start before it and the app can be told
// the sidecar's admin URL. env adds to the app's environment.
func startGemApp(t *testing.T, secret string, port int, env map[string]string) *gemApp {
	t.Helper()
	root := RepoRoot(t)
	full := map[string]string{
		"RUBYLIB":                  filepath.Join(root, "ruby", "lib"),
		"CABLECAR_CALLBACK_SECRET": secret,
	}
	for k, v := range env {
		full[k] = v
	}
	p := StartPuma(t, PumaOptions{Port: port, Rackup: filepath.Join(root, "testdata", "gemapp", "config.ru"), Env: full})
	return &gemApp{puma: p, secret: secret}
}

// gemDo calls one of the app's /do endpoints (Cablecar.publish and
// friends, from plain HTTP in the app) and returns its answer.
func gemDo(t *testing.T, p *Puma, path string, kv ...string) string {
	t.Helper()
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	resp, err := p.Client().Get(p.URL + path + "?" + q.Encode())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
	}
	return strings.TrimSpace(string(body))
}

// openEcho dials /ws/echo in room and returns the client and its
// connection id, read from the handler's first message.
func openEcho(t *testing.T, c *Cablecar, room string) (*WSClient, string) {
	t.Helper()
	ws, _ := MustDialWS(t, c.URL+"/ws/echo?room="+room, nil)
	_, data, err := ws.Read(gemWait)
	if err != nil {
		t.Fatalf("reading the open message: %v", err)
	}
	var id, n string
	if _, err := fmt.Sscanf(string(data), "open %s n=%s", &id, &n); err != nil || n != "nil" {
		t.Fatalf("open message %q", data)
	}
	return ws, id
}

func TestGemHandlersThroughCablecar(t *testing.T) {
	t.Parallel()
	const secret = "gem-e2e-secret"
	port := FreePort(t)
	c := StartCablecar(t, CablecarOptions{
		Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
		Config:   map[string]any{"callback.secret": secret},
	})
	app := startGemApp(t, secret, port, map[string]string{"CABLECAR_ADMIN_URL": c.AdminURL})

	a, idA := openEcho(t, c, "1")
	b, idB := openEcho(t, c, "1")

	t.Run("replies", func(t *testing.T) {
		a.Send("echo:héllo")
		a.ExpectText(gemWait, "héllo")
		a.SendBinary([]byte{0, 1, 2, 0xff})
		a.ExpectBinary(gemWait, []byte{0, 1, 2, 0xff})
	})

	// The handler is a new object for every event: only client.state
	// carries the count from one message to the next.
	t.Run("state survives between events", func(t *testing.T) {
		for i := 1; i <= 3; i++ {
			a.Send("count")
			a.ExpectText(gemWait, "n="+strconv.Itoa(i))
		}
		b.Send("count")
		b.ExpectText(gemWait, "n=1")
	})

	t.Run("publish except self", func(t *testing.T) {
		a.Send("pub:to the room")
		b.ExpectText(gemWait, "to the room")
		a.Send("echo:after")
		a.ExpectText(gemWait, "after") // and not "to the room" before it
	})

	t.Run("publish, send and close from anywhere in the app", func(t *testing.T) {
		if got := gemDo(t, app.puma, "/do/publish", "ch", "room:1", "data", "from the app", "except", idB); got != "true" {
			t.Fatalf("publish answered %q", got)
		}
		a.ExpectText(gemWait, "from the app")
		gemDo(t, app.puma, "/do/publish", "ch", "room:1", "data", "bytes", "binary", "1")
		a.ExpectBinary(gemWait, []byte("bytes"))
		b.ExpectBinary(gemWait, []byte("bytes")) // the except above left b out: this is b's next message
		if got := gemDo(t, app.puma, "/do/send", "id", idA, "data", "just you"); got != "true" {
			t.Fatalf("send answered %q", got)
		}
		a.ExpectText(gemWait, "just you")
		if got := gemDo(t, app.puma, "/do/send", "id", "c_AAAAAAAABBBBBBBBBBBBBBBB", "data", "x"); got != "false" {
			t.Fatalf("send to a connection nobody holds answered %q, want false", got)
		}
		gemDo(t, app.puma, "/do/close", "id", idB, "code", "4007", "reason", "from the app")
		if reason := b.ExpectCloseCode(gemWait, 4007); reason != "from the app" {
			t.Fatalf("close reason %q", reason)
		}
	})

	t.Run("close from a handler", func(t *testing.T) {
		a.Send("close")
		if reason := a.ExpectCloseCode(gemWait, 4000); reason != "bye" {
			t.Fatalf("close reason %q", reason)
		}
	})

	t.Run("refusal", func(t *testing.T) {
		_, resp, err := DialWS(t, c.URL+"/ws/nothing-here", nil)
		if err == nil || resp == nil || resp.StatusCode != 403 {
			t.Fatalf("want 403, got %v %s", err, describeResponse(resp))
		}
	})

	// The seed's chatroom, unchanged but for its puts: each message comes
	// back to its sender once (write) and reaches the others once (each).
	t.Run("ugly chatroom", func(t *testing.T) {
		alice, _ := MustDialWS(t, c.URL+"/ws/ugly/alice", nil)
		bob, _ := MustDialWS(t, c.URL+"/ws/ugly/bob", nil)
		carol, _ := MustDialWS(t, c.URL+"/ws/ugly/carol", nil)
		// Each joined the handler's "each" channel with its accept, before
		// its 101: all three are subscribed by the time they are dialled.
		alice.Send("hi")
		alice.ExpectText(gemWait, "alice: hi")
		bob.ExpectText(gemWait, "alice: hi")
		carol.ExpectText(gemWait, "alice: hi")
		bob.Send("hello")
		bob.ExpectText(gemWait, "bob: hello")
		alice.ExpectText(gemWait, "bob: hello")
		carol.ExpectText(gemWait, "bob: hello")
		// A second copy of bob's message to alice would have been queued
		// with the first, ahead of anything alice causes next.
		alice.Send("again")
		alice.ExpectText(gemWait, "alice: again")
	})
}

// A request that reaches Puma without Cablecar's signature, or with a
// signature made with another secret, is refused by the gem before the
// app sees it; through a sidecar with the wrong secret the browser gets
// the 401.
func TestGemRefusesUnsignedCallbacks(t *testing.T) {
	t.Parallel()
	port := FreePort(t)
	c := StartCablecar(t, CablecarOptions{
		Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
		Config:   map[string]any{"callback.secret": "not-the-apps"},
	})
	app := startGemApp(t, "the-apps-secret", port, nil)

	_, resp, err := DialWS(t, c.URL+"/ws/echo?room=1", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("want 401 through a sidecar with the wrong secret, got %v %s", err, describeResponse(resp))
	}

	body := `{"connection":{"id":"c_AAAAAAAABBBBBBBBBBBBBBBB","state":"","channels":[]},"events":[{"id":"c_AAAAAAAABBBBBBBBBBBBBBBB:1","type":"message","data":"echo:x"}]}`
	for name, sig := range map[string]string{
		"unsigned": "",
		"forged":   "t=" + strconv.FormatInt(time.Now().Unix(), 10) + ",v1=" + strings.Repeat("ab", 32),
	} {
		req, _ := http.NewRequest("POST", app.puma.URL+"/ws/echo?room=1", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Cablecar-Connection-Id", "c_AAAAAAAABBBBBBBBBBBBBBBB")
		if sig != "" {
			req.Header.Set("Cablecar-Signature", sig)
		}
		resp, err := app.puma.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s event POST: %d, want 401", name, resp.StatusCode)
		}
	}
}

// Cablecar.publish, send_to and close through Redis (the gem writes the
// documented names and envelope itself), to clients on two nodes.
func TestGemPublishesThroughRedis(t *testing.T) {
	t.Parallel()
	const secret = "gem-redis-secret"
	r := StartRedis(t)
	port := FreePort(t)
	node := func() *Cablecar {
		return StartCablecar(t, CablecarOptions{
			Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
			Config:   map[string]any{"callback.secret": secret, "broker.url": "redis://" + r.Addr},
		})
	}
	n1, n2 := node(), node()
	app := startGemApp(t, secret, port, map[string]string{"GEMAPP_REDIS_URL": "redis://" + r.Addr})

	a, idA := openEcho(t, n1, "r")
	b, idB := openEcho(t, n2, "r")

	// Text goes as the app's own PUBLISH would; binary and except in the
	// envelope. Each is checked on the node the app did not pick.
	gemDo(t, app.puma, "/do/publish", "ch", "room:r", "data", "plain text")
	a.ExpectText(gemWait, "plain text")
	b.ExpectText(gemWait, "plain text")
	gemDo(t, app.puma, "/do/publish", "ch", "room:r", "data", "\x00\xffbin", "binary", "1")
	a.ExpectBinary(gemWait, []byte("\x00\xffbin"))
	b.ExpectBinary(gemWait, []byte("\x00\xffbin"))
	gemDo(t, app.puma, "/do/publish", "ch", "room:r", "data", "not for a", "except", idA)
	b.ExpectText(gemWait, "not for a")
	gemDo(t, app.puma, "/do/send", "id", idA, "data", "to a on node 1")
	a.ExpectText(gemWait, "to a on node 1") // and not "not for a" before it
	if got := gemDo(t, app.puma, "/do/send", "id", idB, "data", "to b on node 2"); got != "true" {
		t.Fatalf("send through Redis answered %q", got)
	}
	b.ExpectText(gemWait, "to b on node 2")
	gemDo(t, app.puma, "/do/close", "id", idB, "code", "4100", "reason", "via redis")
	if reason := b.ExpectCloseCode(gemWait, 4100); reason != "via redis" {
		t.Fatalf("close reason %q", reason)
	}
	// A reply's publish crosses nodes too: a on node 1 to b's room-mate
	// c on node 2.
	c, _ := openEcho(t, n2, "r")
	a.Send("pub:across")
	c.ExpectText(gemWait, "across")
}
