package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReadmeWebSocketExample runs the config.ru shown in the README's
// "WebSockets in one minute" under real Puma behind the real binary, so the
// front door's example cannot rot: the welcome body arrives first, what one
// client says is published to the lobby and reaches both, and plain HTTP
// still passes through.
func TestReadmeWebSocketExample(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join(RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## WebSockets in one minute")
	if !ok {
		t.Fatal(`README has no "WebSockets in one minute" section`)
	}
	_, rest, ok = strings.Cut(rest, "```ruby\n")
	code, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("no ruby block in that section")
	}
	rackup := filepath.Join(t.TempDir(), "config.ru")
	if err := os.WriteFile(rackup, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	p := StartPuma(t, PumaOptions{Rackup: rackup})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream})

	alice, _ := MustDialWS(t, c.URL+"/chat", nil)
	bob, _ := MustDialWS(t, c.URL+"/chat", nil)
	alice.ExpectText(5*time.Second, "welcome")
	bob.ExpectText(5*time.Second, "welcome")
	alice.Send("hello lobby")
	bob.ExpectText(5*time.Second, "hello lobby")
	alice.ExpectText(5*time.Second, "hello lobby")

	code2, body, err := get(newClient(t), c.URL+"/anything", 5*time.Second)
	if err != nil || code2 != 200 || body != "plain HTTP, as always\n" {
		t.Fatalf("plain HTTP through the README app: %d %q %v", code2, body, err)
	}
}
