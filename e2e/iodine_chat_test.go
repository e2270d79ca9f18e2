package e2e

import (
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The chatroom of seed 002, the upgrade.websocket proof of concept, runs
// unchanged under Puma behind Cablecar (testdata/iodine_chat): messages
// come back to the sender (write) and reach the others (each); its
// on_close prints how many are left (count: connections of the handler's
// kind, on every node, from the admin API's GET /presence); on SIGTERM its
// on_shutdown says goodbye to every client before the 1012. Run with
//
//	go test -race -count=1 -run 'TestIodineChatroom' ./e2e/
//
// CountsDown needs the admin API's GET /presence (SPEC §11).

func startIodineChat(t *testing.T, config map[string]any) (*Cablecar, *Puma) {
	t.Helper()
	const secret = "iodine-chat-secret"
	root := RepoRoot(t)
	port := FreePort(t)
	cfg := map[string]any{"callback.secret": secret}
	for k, v := range config {
		cfg[k] = v
	}
	c := StartCablecar(t, CablecarOptions{Upstream: "http://127.0.0.1:" + strconv.Itoa(port), Config: cfg})
	p := StartPuma(t, PumaOptions{Port: port, Rackup: filepath.Join(root, "testdata", "iodine_chat", "config.ru"),
		Env: map[string]string{
			"RUBYLIB":                  filepath.Join(root, "ruby", "lib"),
			"CABLECAR_CALLBACK_SECRET": secret,
			"CABLECAR_ADMIN_URL":       c.AdminURL,
		}})
	return c, p
}

// joinChat dials the chatroom as nickname and waits until the app has
// run its on_open (it prints a line for each).
func joinChat(t *testing.T, c *Cablecar, p *Puma, nickname string) *WSClient {
	t.Helper()
	before := strings.Count(p.Output(), "We have a websocket connection")
	ws, _ := MustDialWS(t, c.URL+"/"+nickname, nil)
	WaitFor(t, gemWait, nickname+"'s on_open", func() bool {
		return strings.Count(p.Output(), "We have a websocket connection") > before
	})
	return ws
}

var leftLine = regexp.MustCompile(`Bye Bye\.\.\. (\d+) connections left\.\.\.`)

// leftCounts are the counts the chatroom's on_close printed, in order.
func leftCounts(p *Puma) []int {
	var out []int
	for _, m := range leftLine.FindAllStringSubmatch(p.Output(), -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

func TestIodineChatroom(t *testing.T) {
	t.Parallel()

	// The chat itself, then SIGTERM: every client gets the goodbye its
	// on_shutdown wrote, then 1012; Cablecar exits 0.
	t.Run("GoodbyeBeforeRestart", func(t *testing.T) {
		t.Parallel()
		c, p := startIodineChat(t, map[string]any{"shutdown_timeout": "10s", "websocket.shutdown_grace": "5s"})
		if code, body, err := get(newClient(t), c.URL+"/", 5*time.Second); err != nil || code != 200 ||
			!strings.Contains(body, "The Ugly Chatroom POC") {
			t.Fatalf("the page: %d %.80q %v", code, body, err)
		}
		nicks := []string{"alice", "bob", "carol"}
		var clients []*WSClient
		for _, n := range nicks {
			clients = append(clients, joinChat(t, c, p, n))
		}
		clients[0].Send("hello")
		for _, ws := range clients {
			ws.ExpectText(gemWait, "alice: hello") // alice once by write, the others once by each
		}

		var reads []<-chan untilClose
		for _, ws := range clients {
			reads = append(reads, readUntilClose(ws, 15*time.Second))
		}
		c.Signal(syscall.SIGTERM)
		for i, r := range reads {
			got := <-r
			if !slices.Equal(got.texts, []string{"The server is shutting down, goodbye."}) || got.code != websocket.CloseServiceRestart {
				t.Errorf("%s got %q then close %d; want the goodbye, then 1012", nicks[i], got.texts, got.code)
			}
		}
		if code, err := c.Wait(12 * time.Second); err != nil || code != 0 {
			t.Fatalf("exit %d, %v", code, err)
		}
	})

	// on_close prints how many are left: one leaves, then the rest go
	// with the shutdown, each counting down. Needs GET /presence.
	t.Run("CountsDown", func(t *testing.T) {
		t.Parallel()
		c, p := startIodineChat(t, map[string]any{"shutdown_timeout": "10s", "websocket.shutdown_grace": "5s"})
		var clients []*WSClient
		for _, n := range []string{"dave", "erin", "frank"} {
			clients = append(clients, joinChat(t, c, p, n))
		}
		if code := clients[0].CloseWith(gemWait, 1000, ""); code != 1000 {
			t.Fatalf("close answered %d", code)
		}
		WaitFor(t, gemWait, "on_close to print how many are left", func() bool { return len(leftCounts(p)) == 1 })
		if got := leftCounts(p); got[0] != 2 {
			t.Fatalf("on_close printed %v connections left after one of three left; want 2", got)
		}
		c.Signal(syscall.SIGTERM)
		for _, ws := range clients[1:] {
			ws.ExpectCloseCode(gemWait, websocket.CloseServiceRestart)
		}
		WaitFor(t, 10*time.Second, "on_close of the two others", func() bool { return len(leftCounts(p)) == 3 })
		// Both are closed before either close event is handled, or one
		// after the other: either way nobody is left at the end, and the
		// count never goes up.
		got := leftCounts(p)
		if got[2] != 0 || got[1] < got[2] || got[1] > 1 {
			t.Errorf("on_close printed %v connections left; want 2, then 1 or 0, then 0", got)
		}
		if code, err := c.Wait(12 * time.Second); err != nil || code != 0 {
			t.Fatalf("exit %d, %v", code, err)
		}
	})
}
