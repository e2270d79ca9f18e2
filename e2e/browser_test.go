package e2e

import (
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestBrowserChat is the chat example (examples/chat) in a real browser:
// two people, each in a browser context of their own, talk through
// Cablecar with the browser's native WebSocket, and when Cablecar restarts
// the page says so and comes back by itself.
func TestBrowserChat(t *testing.T) {
	t.Parallel()
	app := startChatApp(t)
	c := app.cablecar(t, nil)
	b := StartBrowser(t)
	room := fmt.Sprintf("browser-%d", time.Now().UnixNano()%1e6)

	alice := b.NewPage("alice")
	alice.joinChat(c, room, "alice")
	alice.waitCount(1)

	bob := b.NewPage("bob")
	bob.joinChat(c, room, "bob")
	alice.waitNotice("join", "bob")
	alice.waitCount(2)
	bob.waitCount(2)
	// Bob came second, so he sees alice among those present.
	bob.WaitJS("alice listed as present", `document.getElementById("who").textContent === "Here: alice, bob"`)

	// Markup in a message is shown as text, never parsed.
	hello := `hello <b>bob</b> <img src=x onerror="document.title='pwned'">`
	alice.say(hello)
	alice.waitSaid("alice", hello)
	bob.waitSaid("alice", hello)
	bob.say("hi alice ☕")
	bob.waitSaid("bob", "hi alice ☕")
	alice.waitSaid("bob", "hi alice ☕")
	// Each saw each message exactly once: alice's own came back to her
	// once, before bob's reply, and nothing more is on its way.
	for _, p := range []*Page{alice, bob} {
		for _, m := range [][2]string{{"alice", hello}, {"bob", "hi alice ☕"}} {
			if n := p.said(m[0], m[1]); n != 1 {
				t.Errorf("page %s shows %s's %q %d times, want once", p.Name, m[0], m[1], n)
			}
		}
		if n := EvalJS[int](p, `document.querySelectorAll("#messages b, #messages img").length`); n != 0 {
			t.Errorf("page %s: a message's markup became %d elements", p.Name, n)
		}
	}

	// Bob leaves with the button.
	bob.Do("leaving", chromedp.Click(chromedp.ID("leave")))
	bob.waitState("offline")
	alice.waitNotice("leave", "bob")
	alice.waitCount(1)
	alice.waitState("online")
	alice.Screenshot("browser-chat-alice.png")

	// Cablecar restarts (SIGTERM: every socket closed with 1012): the page
	// says it is reconnecting, and once Cablecar is back it is online again
	// by itself, counted once.
	c.Signal(syscall.SIGTERM)
	alice.WaitJS("the reconnecting state", `document.getElementById("state").dataset.state === "reconnecting" &&
		/^reconnecting in \d+s$/.test(document.getElementById("state").textContent)`)
	if code, err := c.Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("cablecar after SIGTERM: exit %d, %v", code, err)
	}
	app.cablecar(t, map[string]any{"listen": c.Addr})
	// The page may be in its longest wait by now: up to 10 s.
	alice.WaitJSWithin(15*time.Second, "online again", `document.getElementById("state").dataset.state === "online"`)
	alice.waitCount(1)
	alice.waitSaid("bob", "hi alice ☕") // the history came again
	alice.Screenshot("browser-chat-alice-reconnected.png")

	// A page closed without the button leaves too.
	bob.joinChat(c, room, "bob")
	alice.waitCount(2)
	bob.Close()
	alice.waitCount(1)
}

// joinChat opens the chat page on c and joins room as nick, through the
// form, and waits until the page is online.
func (p *Page) joinChat(c *Cablecar, room, nick string) {
	p.t.Helper()
	p.Do("joining "+room+" as "+nick,
		chromedp.Navigate(c.URL+"/"),
		chromedp.WaitVisible(chromedp.ID("join")),
		chromedp.SetValue(chromedp.ID("room"), room),
		chromedp.SetValue(chromedp.ID("nick"), nick),
		chromedp.Click(chromedp.ID("join-button")),
		chromedp.WaitNotVisible(chromedp.ID("join")),
		chromedp.WaitVisible(chromedp.ID("messages")),
	)
	p.waitState("online")
}

func (p *Page) waitState(state string) {
	p.t.Helper()
	p.WaitJS("the state "+state, `document.getElementById("state").dataset.state === `+jsString(state))
}

func (p *Page) waitCount(n int) {
	p.t.Helper()
	p.WaitJS(fmt.Sprintf("%d online", n),
		fmt.Sprintf(`!document.getElementById("online").hidden && document.getElementById("count").textContent === "%d"`, n))
}

// waitNotice waits for nick's join or leave notice.
func (p *Page) waitNotice(kind, nick string) {
	p.t.Helper()
	p.WaitJS(nick+"'s "+kind, fmt.Sprintf(
		`[...document.querySelectorAll("#messages li.%s")].some(li => li.dataset.nick === %s)`, kind, jsString(nick)))
}

func (p *Page) say(text string) {
	p.t.Helper()
	p.Do("saying "+text,
		chromedp.SetValue(chromedp.ID("text"), text),
		chromedp.Click(chromedp.ID("send")),
	)
}

func (p *Page) waitSaid(nick, text string) {
	p.t.Helper()
	p.WaitJS(fmt.Sprintf("%s saying %q", nick, text), p.saidJS(nick, text)+" > 0")
}

// said counts the messages shown as nick saying text.
func (p *Page) said(nick, text string) int {
	p.t.Helper()
	return EvalJS[int](p, p.saidJS(nick, text))
}

func (p *Page) saidJS(nick, text string) string {
	return fmt.Sprintf(`[...document.querySelectorAll("#messages li.message")].filter(li =>
		li.dataset.nick === %s && li.querySelector(".text").textContent === %s).length`, jsString(nick), jsString(text))
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
