package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// cliRun runs `cablecar <args>` against node c's config (its admin.listen
// and admin.api_key), with env added, and returns the exit code and output.
func cliRun(t *testing.T, c *Cablecar, env []string, args ...string) (int, string, string) {
	t.Helper()
	full := append([]string{args[0], "-config", c.ConfigPath}, args[1:]...)
	return RunCablecar(t, env, full...)
}

// cliMust is cliRun that fails the test unless the exit code is want.
func cliMust(t *testing.T, c *Cablecar, want int, args ...string) string {
	t.Helper()
	code, out, errOut := cliRun(t, c, nil, args...)
	if code != want {
		t.Fatalf("cablecar %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out
}

// TestCLIVerbsOneNode drives a connection from the shell: publish, send,
// connection and close through the verbs, each against the running
// node's admin API found through the same config file, with the exit codes
// docs/cli.md promises.
func TestCLIVerbsOneNode(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	const key = "cli-test-admin-key"
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{"admin.api_key": key}})
	ws, id := ConnectWS(t, c, p, "/ws/cli?subscribe=room:cli&first=ready", nil)
	ws.ExpectText(wsWait, "ready")

	if out := cliMust(t, c, 0, "publish", "room:cli", "hello room"); !strings.Contains(out, "published to room:cli") {
		t.Errorf("publish said %q", out)
	}
	ws.ExpectText(wsWait, "hello room")
	// Flags after the arguments, and a message that starts with a dash.
	out := cliMust(t, c, 0, "send", id, "-json", "--", "-just me")
	ws.ExpectText(wsWait, "-just me")
	if !strings.Contains(out, `"sent"`) {
		t.Errorf("send -json printed %q, want the API's JSON", out)
	}

	var info struct {
		ID       string   `json:"id"`
		Node     string   `json:"node"`
		Channels []string `json:"channels"`
	}
	out = cliMust(t, c, 0, "connection", "-json", id)
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.ID != id || len(info.Channels) != 1 || info.Channels[0] != "room:cli" {
		t.Fatalf("connection -json: %q (%v)", out, err)
	}
	if node, _ := pubsub.NodeOf(id); info.Node != node {
		t.Errorf("connection says node %q, the id names %q", info.Node, node)
	}
	if out := cliMust(t, c, 0, "connection", id); !strings.Contains(out, "on node "+info.Node) || !strings.Contains(out, "room:cli") {
		t.Errorf("connection printed %q", out)
	}

	// Refusals: a wrong key (4), input the API refuses (2), usage (2).
	if code, _, errOut := cliRun(t, c, []string{"CABLECAR_ADMIN_API_KEY=wrong"}, "publish", "room:cli", "x"); code != 4 || !strings.Contains(errOut, "api_key") {
		t.Errorf("a wrong key: exit %d, %q; want 4 naming the key", code, errOut)
	}
	cliMust(t, c, 2, "publish", "not a channel", "x")
	cliMust(t, c, 2, "close", id, "-code", "1006")
	cliMust(t, c, 2, "send", id)

	cliMust(t, c, 0, "close", id, "-code", "4001", "-reason", "from the shell")
	if code, reason := ws.ExpectClose(wsWait); code != 4001 || reason != "from the shell" {
		t.Fatalf("close: the client got %d %q", code, reason)
	}
	WaitFor(t, 10*time.Second, "the connection to be gone", func() bool {
		code, _, _ := cliRun(t, c, nil, "connection", id)
		return code == 3
	})
	cliMust(t, c, 3, "send", id, "anyone there?")

	// No node at the address: 1, saying so.
	code, _, errOut := RunCablecar(t, nil, "publish", "-admin", "http://127.0.0.1:"+strconv.Itoa(FreePort(t)), "room:cli", "x")
	if code != 1 || !strings.Contains(errOut, "cannot reach the admin API") {
		t.Errorf("no node: exit %d, %q", code, errOut)
	}
	if _, out, _ := RunCablecar(t, nil, "version", "-json"); !strings.Contains(out, `"version"`) {
		t.Errorf("version -json printed %q", out)
	}
}

// TestCLIVerbsTwoNodes: with Redis, the verbs reach a connection through
// any node: `connection` on node B finds the one open on node A, and
// `send` and `close` through B reach it.
func TestCLIVerbsTwoNodes(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 2, r.URL, nil)
	a, b := nodes[0], nodes[1]
	ws, id := joinWS(t, a, p, "/ws/cli2", "room:two")

	var info struct {
		Node     string   `json:"node"`
		Channels []string `json:"channels"`
	}
	out := cliMust(t, b, 0, "connection", id, "-json")
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("connection -json through node B: %q: %v", out, err)
	}
	if node, _ := pubsub.NodeOf(id); info.Node != node || len(info.Channels) != 1 || info.Channels[0] != "room:two" {
		t.Fatalf("node B says %+v for a connection of node %s", info, node)
	}
	cliMust(t, b, 0, "publish", "room:two", "via B")
	ws.ExpectText(wsWait, "via B")
	cliMust(t, b, 0, "send", id, "to you via B")
	ws.ExpectText(wsWait, "to you via B")
	cliMust(t, b, 0, "close", id, "-code", "4002")
	ws.ExpectCloseCode(wsWait, 4002)
	WaitFor(t, 10*time.Second, "node B to find it gone", func() bool {
		code, _, _ := cliRun(t, b, nil, "connection", id)
		return code == 3
	})
}
