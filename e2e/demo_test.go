package e2e

import (
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMakeDemo runs what `make demo` runs (examples/chat/demo.sh) on its
// fixed ports, as a newcomer would: it must print the URL once both servers
// answer, serve the chat page and a working socket on :3000, and stop both
// servers on Ctrl-C (SIGINT to the script, as the terminal sends it) so the
// ports are free again.
func TestMakeDemo(t *testing.T) {
	ports := []string{"127.0.0.1:3000", "127.0.0.1:3001", "127.0.0.1:9394"}
	for _, addr := range ports {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("%s is taken: the demo's ports (3000, 3001, 9394) must be free for this test (is make demo or make run running?)", addr)
		}
	}
	out := &Output{}
	cmd := exec.Command("bash", filepath.Join(RepoRoot(t), "examples", "chat", "demo.sh"))
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(cleanEnv(), "CABLECAR_BIN="+CablecarBinary(t))
	cmd.Stdout, cmd.Stderr = out, out
	dumpOnFailure(t, "make demo", out)
	p := startProcess(t, "demo.sh", cmd)
	// On failure, Ctrl-C as a user would; the script then stops both.
	t.Cleanup(func() { p.stop(syscall.SIGINT, 20*time.Second) })

	WaitFor(t, 60*time.Second, "the demo to print its URL", func() bool {
		return p.exited() || strings.Contains(out.String(), "http://localhost:3000/")
	})
	if p.exited() {
		t.Fatalf("demo.sh exited before printing the URL: %v", p.err)
	}

	code, body, err := get(http.DefaultClient, "http://127.0.0.1:3000/", 5*time.Second)
	if err != nil || code != 200 || !strings.Contains(body, "Cablecar chat") {
		t.Fatalf("GET / through the demo: %d %v %.200q", code, err, body)
	}
	// The chat helpers need only the proxy's URL.
	ch, _ := join(t, &Cablecar{URL: "http://127.0.0.1:3000"}, "lobby", "demo-test", 1)
	ch.say("hello from the demo test")
	ch.expectSaid("demo-test", "hello from the demo test")
	// The rooms keep history, so the page can resume after a drop.
	if ch.pos == "" {
		t.Errorf("the demo's broadcasts carry no position: history is off for the chat rooms")
	}

	p.signalGroup(syscall.SIGINT)
	if !p.wait(30 * time.Second) {
		t.Fatal("demo.sh did not exit within 30 s of Ctrl-C")
	}
	WaitFor(t, 10*time.Second, "the demo's ports to be free", func() bool {
		for _, addr := range ports {
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				return false
			}
		}
		return true
	})
	if !strings.Contains(out.String(), "stopping") {
		t.Errorf("demo.sh did not say it was stopping")
	}
}
