package e2e

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// The chat example's page after a lost connection (examples/chat, "Nothing
// lost on reconnect"): the network between the browser and Cablecar is
// cut, the room keeps talking, and once the network is back the page shows
// every message, once, in order — resumed from its last position, not
// rebuilt from a snapshot. And when Cablecar's history no longer reaches
// back, the page says so and shows the app's snapshot instead.

// outage is how long the page's network is cut in the resume test: the
// issue's "a browser that lost its connection for 20 s".
const outage = 20 * time.Second

// TestChatResumeBrowser: the page on node 1, bob on node 2 of two nodes
// sharing Redis; the page's network is cut for 20 s while bob says 60
// things, more than the app's own snapshot holds (50), so only a resume
// can show them all.
func TestChatResumeBrowser(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	app := startChatApp(t)
	cfg := map[string]any{
		"broker.url": r.URL, "broker.lease_ttl": leaseTTL.String(),
		"history.size": 500, "history.channels": []string{"chat:*"},
	}
	n1, n2 := app.cablecar(t, cfg), app.cablecar(t, cfg)
	for _, c := range []*Cablecar{n1, n2} {
		WaitFor(t, 15*time.Second, "/readyz 200 on "+c.AdminAddr, func() bool { return c.AdminStatus("/readyz") == 200 })
	}
	net1 := startNetCut(t, n1.Addr)
	room := fmt.Sprintf("resume-%d", time.Now().UnixNano()%1e6)

	alice, bob := chatBeforeTheCut(t, net1, n2, room)
	cutAt := time.Now()
	net1.Cut()
	alice.waitState("reconnecting")
	bob.expectLeave("alice") // Cablecar saw the socket go: the app published the leave
	bob.expectCount(1)

	var away []string
	for i := 1; i <= 60; i++ {
		text := fmt.Sprintf("while away %02d", i)
		bob.say(text)
		bob.expectSaid("bob", text)
		away = append(away, text)
		// Spread over the outage: the room talks all along, not in one burst.
		time.Sleep(time.Until(cutAt.Add(outage * time.Duration(i) / 60)))
	}
	net1.Restore()
	chatAfterTheCut(t, alice, bob)

	want := []string{"join|alice|alice joined", "join|bob|bob joined"}
	for _, s := range []string{"before 1", "before 2", "before 3"} {
		want = append(want, "message|alice|"+s)
	}
	want = append(want, "leave|alice|alice left") // while it was away, replayed too
	for _, s := range away {
		want = append(want, "message|bob|"+s)
	}
	want = append(want, "join|alice|alice joined", "message|bob|after")
	if got := chatLines(alice); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the page shows, after 20 s offline:\n%s\nwant every message once, in order, with nothing rebuilt:\n%s",
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	alice.Screenshot("chat-resume-alice.png")
}

// TestChatResumeBrowserTooLate: Cablecar keeps only 3 messages per room, so
// when the page comes back its position is gone from the history: it gets
// the app's snapshot (the room's last 50), says so, and still shows each
// message once, in order.
func TestChatResumeBrowserTooLate(t *testing.T) {
	t.Parallel()
	app := startChatApp(t)
	c := app.cablecar(t, map[string]any{"history.size": 3})
	net1 := startNetCut(t, c.Addr)
	room := fmt.Sprintf("too-late-%d", time.Now().UnixNano()%1e6)

	alice, bob := chatBeforeTheCut(t, net1, c, room)
	net1.Cut()
	alice.waitState("reconnecting")
	bob.expectLeave("alice")
	bob.expectCount(1)
	var away []string
	for i := 1; i <= 10; i++ {
		text := fmt.Sprintf("while away %02d", i)
		bob.say(text)
		bob.expectSaid("bob", text)
		away = append(away, text)
	}
	net1.Restore()
	chatAfterTheCut(t, alice, bob)

	// The snapshot replaced the list (the join notices before it are gone:
	// the app keeps only messages), then the notice, then what is live.
	var want []string
	for _, s := range append([]string{"before 1", "before 2", "before 3"}, away...) {
		who := "bob"
		if strings.HasPrefix(s, "before") {
			who = "alice"
		}
		want = append(want, "message|"+who+"|"+s)
	}
	want = append(want, "notice||Reconnected too late to catch up: these are the room's latest messages.",
		"join|alice|alice joined", "message|bob|after")
	if got := chatLines(alice); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the page shows, after a resume the history could not serve:\n%s\nwant the snapshot, the notice, then the live messages:\n%s",
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	alice.Screenshot("chat-resume-too-late-alice.png")
}

// chatBeforeTheCut opens the page as alice through the cuttable network,
// has bob join over a plain WebSocket on bobNode, and alice say three
// things, seen by both.
func chatBeforeTheCut(t *testing.T, pageNet *netCut, bobNode *Cablecar, room string) (*Page, *chatter) {
	t.Helper()
	b := StartBrowser(t)
	alice := b.NewPage("alice")
	alice.joinChat(&Cablecar{URL: pageNet.URL}, room, "alice")
	alice.waitCount(1)
	bob, _ := join(t, bobNode, room, "bob", 2)
	alice.waitNotice("join", "bob")
	alice.waitCount(2)
	for _, s := range []string{"before 1", "before 2", "before 3"} {
		alice.say(s)
		alice.waitSaid("alice", s)
		bob.expectSaid("alice", s)
	}
	return alice, bob
}

// chatAfterTheCut waits for the page to be back (its backoff may be at its
// longest, 10 s) and for bob to say something it must see live.
func chatAfterTheCut(t *testing.T, alice *Page, bob *chatter) {
	t.Helper()
	alice.WaitJSWithin(15*time.Second, "online again", `document.getElementById("state").dataset.state === "online"`)
	bob.expectJoin("alice")
	bob.expectCount(2)
	bob.say("after")
	bob.expectSaid("bob", "after")
	alice.waitSaid("bob", "after")
}

// chatLines is the page's list, one "class|nick|text" line per entry.
func chatLines(p *Page) []string {
	p.t.Helper()
	return EvalJS[[]string](p, `[...document.querySelectorAll("#messages li")].map(li =>
		[li.className, li.dataset.nick || "", li.querySelector(".text").textContent].join("|"))`)
}

// netCut stands for the network between the browser and Cablecar: a TCP
// relay that Cut drops every connection of, and that closes new ones at
// once until Restore — a lost Wi-Fi, as the page and Cablecar see it.
type netCut struct {
	URL string

	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

func startNetCut(t testing.TB, target string) *netCut {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("netCut: %v", err)
	}
	n := &netCut{URL: "http://" + ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	n.wg.Add(1)
	go n.accept()
	t.Cleanup(func() {
		ln.Close()
		n.Cut()
		n.wg.Wait()
	})
	return n
}

func (n *netCut) accept() {
	defer n.wg.Done()
	for {
		c, err := n.ln.Accept()
		if err != nil {
			return
		}
		n.wg.Add(1)
		go n.relay(c)
	}
}

func (n *netCut) relay(client net.Conn) {
	defer n.wg.Done()
	if !n.track(client) {
		return
	}
	server, err := net.DialTimeout("tcp", n.target, 5*time.Second)
	if err != nil || !n.track(server) {
		n.drop(client)
		if server != nil {
			server.Close()
		}
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src) //nolint:errcheck // either side going ends the relay
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	n.drop(client)
	n.drop(server)
	<-done
}

// track records c, or closes it when the network is cut.
func (n *netCut) track(c net.Conn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cut {
		c.Close()
		return false
	}
	n.conns[c] = struct{}{}
	return true
}

func (n *netCut) drop(c net.Conn) {
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
	c.Close()
}

// Cut drops every connection and refuses new ones until Restore.
func (n *netCut) Cut() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut = true
	for c := range n.conns {
		c.Close()
	}
	clear(n.conns)
}

func (n *netCut) Restore() {
	n.mu.Lock()
	n.cut = false
	n.mu.Unlock()
}
