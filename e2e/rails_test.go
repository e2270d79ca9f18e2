package e2e

import (
	"context"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// TestRailsApp runs the gem as its README tells Rails users to
// (config.middleware.use), in a real Rails app (testdata/railsapp, Debian's
// Rails 6.1) with cookie sessions, CSRF protection and host authorization
// on, under Puma behind real Cablecar. The handshake is authorised from the
// session, events reach the controller as the rebuilt GET and so pass
// protect_from_forgery, which still refuses a real forged POST, and a user
// banned after connecting is closed at their next message.
func TestRailsApp(t *testing.T) {
	t.Parallel()
	requireRails(t)
	const secret = "rails-e2e-secret"
	port := FreePort(t)
	c := StartCablecar(t, CablecarOptions{
		Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
		Config:   map[string]any{"callback.secret": secret},
	})
	root := RepoRoot(t)
	StartPuma(t, PumaOptions{Port: port, Rackup: filepath.Join(root, "testdata", "railsapp", "config.ru"), Env: map[string]string{
		"RUBYLIB":                  filepath.Join(root, "ruby", "lib"),
		"CABLECAR_CALLBACK_SECRET": secret,
	}})

	web := &http.Client{Timeout: gemWait}
	login := func(name string) http.Header {
		t.Helper()
		resp, err := web.Get(c.URL + "/login?name=" + name)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := http.Header{}
		for _, ck := range resp.Cookies() {
			h.Add("Cookie", ck.Name+"="+ck.Value)
		}
		if resp.StatusCode != 200 || h.Get("Cookie") == "" {
			t.Fatalf("login %s: %d, cookies %v", name, resp.StatusCode, resp.Cookies())
		}
		return h
	}

	if _, resp, err := DialWS(t, c.URL+"/cable/chat", nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("without a session: want 401, got %v %s", err, describeResponse(resp))
	}

	alice, _ := MustDialWS(t, c.URL+"/cable/chat", login("alice"))
	bob, _ := MustDialWS(t, c.URL+"/cable/chat", login("bob"))

	// The session is read on every event, and the count lives in
	// client.state: the controller and the handler are new each time.
	alice.Send("whoami")
	alice.ExpectText(gemWait, "alice (1)")
	alice.Send("whoami")
	alice.ExpectText(gemWait, "alice (2)")

	bob.Send("hello from rails")
	bob.ExpectText(gemWait, "bob: hello from rails")
	alice.ExpectText(gemWait, "bob: hello from rails")

	// CSRF protection is on: a plain forged POST is refused by Rails.
	resp, err := web.Post(c.URL+"/form", "application/x-www-form-urlencoded", strings.NewReader("x=1"))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("a POST without a CSRF token: %d, want 422 (is protect_from_forgery on?)", resp.StatusCode)
	}

	// Banned while connected: the next event's rebuilt request is refused
	// by the controller, the gem answers 410, and Cablecar closes.
	resp, err = web.Get(c.URL + "/ban?name=bob")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	bob.Send("still here?")
	bob.ExpectCloseCode(gemWait, websocket.CloseNormalClosure)
	alice.Send("whoami")
	alice.ExpectText(gemWait, "alice (3)") // and not bob's last words
}

// requireRails fails (never skips) when Rails is missing: make deps
// installs Debian's ruby-railties.
func requireRails(t *testing.T) {
	t.Helper()
	ruby := requireTool(t, "ruby")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, ruby, "-e", `require "rails"; require "action_controller/railtie"; print Rails.version`).CombinedOutput()
	if err != nil {
		t.Fatalf("Rails is needed (run make deps, or apt-get install ruby-railties): %v\n%s", err, out)
	}
}
