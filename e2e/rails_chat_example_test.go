package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestRailsChatExample drives examples/rails_chat (Debian's Rails 6.1,
// its ActionCable code as a Rails guide writes it, cable.yml adapter
// cablecar) under Puma behind real Cablecar, in headless Chromium with the
// real @rails/actioncable and turbo-rails' Turbo from e2e/.jsdeps: two
// people sign in through the form and chat, each seeing the other; every
// message also changes the room's count on both pages as a Turbo Stream;
// then Cablecar stops (SIGTERM) and starts again on the same ports, and
// both pages reconnect and resubscribe by themselves and the chat and the
// Turbo Stream work again. Screenshots go to artifacts/.
func TestRailsChatExample(t *testing.T) {
	t.Parallel()
	requireRails(t)
	actionCableJS(t) // make jsdeps, when the packages are missing
	turboRailsJS(t)
	const secret = "rails-chat-example-secret"
	root := RepoRoot(t)
	port := FreePort(t)
	cfg := map[string]any{"callback.secret": secret}
	c := StartCablecar(t, CablecarOptions{Upstream: "http://127.0.0.1:" + strconv.Itoa(port), Config: cfg})
	StartPuma(t, PumaOptions{Port: port, Rackup: filepath.Join(root, "examples", "rails_chat", "config.ru"), Env: map[string]string{
		// As make demo-rails runs it.
		"RAILS_ENV":                "development",
		"RUBYLIB":                  filepath.Join(root, "ruby", "lib"),
		"CABLECAR_CALLBACK_SECRET": secret,
		"CABLECAR_ADMIN_URL":       c.AdminURL,
		"RAILS_CHAT_JSDEPS":        filepath.Join(root, "e2e", ".jsdeps", "node_modules"),
	}})
	// localhost, as the demo prints it: Rails' development default for
	// ActionCable's allowed origins.
	_, proxyPort, _ := net.SplitHostPort(c.Addr)
	site := "http://localhost:" + proxyPort
	b := StartBrowser(t)

	alice := b.NewPage("rails-chat-alice")
	bob := b.NewPage("rails-chat-bob")
	for _, p := range []*Page{alice, bob} {
		p.railsChatLogin(site, p.Name[len("rails-chat-"):])
		p.railsChatConnected(1)
	}

	alice.railsChatSay("hello bob")
	bob.railsChatWaitSaid("alice", "hello bob")
	bob.railsChatSay("hi alice")
	alice.railsChatWaitSaid("bob", "hi alice")
	// The count came as a Turbo Stream: both pages were rendered at 0.
	for _, p := range []*Page{alice, bob} {
		p.railsChatWaitStats("2 messages, last from bob")
	}
	alice.Screenshot("rails-chat-alice.png")
	bob.Screenshot("rails-chat-bob.png")

	// Cablecar restarts: the pages are told to reconnect, and come back.
	c.Signal(syscall.SIGTERM)
	for _, p := range []*Page{alice, bob} {
		p.WaitJS("the page to notice the restart", `document.getElementById("state").dataset.state === "reconnecting"`)
	}
	if code, err := c.Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("cablecar after SIGTERM: exit %d, %v", code, err)
	}
	cfg["listen"] = c.Addr
	cfg["admin.listen"] = c.AdminAddr // where the app publishes
	StartCablecar(t, CablecarOptions{Upstream: "http://127.0.0.1:" + strconv.Itoa(port), Config: cfg})
	for _, p := range []*Page{alice, bob} {
		// @rails/actioncable's own schedule: a connection is stale after
		// 6 s without a ping, retried with backoff.
		p.railsChatConnectedWithin(time.Minute, 2)
	}

	bob.railsChatSay("still here?")
	alice.railsChatWaitSaid("bob", "still here?")
	alice.railsChatSay("yes, after the restart")
	bob.railsChatWaitSaid("alice", "yes, after the restart")
	for _, p := range []*Page{alice, bob} {
		p.railsChatWaitStats("4 messages, last from alice")
	}
	alice.Screenshot("rails-chat-alice-reconnected.png")
	bob.Screenshot("rails-chat-bob-reconnected.png")
}

// TestRailsChatDemo runs what `make demo-rails` runs
// (examples/rails_chat/demo.sh), moved to free ports by its environment
// variables: it prints the URL once Puma and Cablecar both answer, the
// login page comes through Cablecar, and Ctrl-C (SIGINT to the script's
// process group, as a terminal sends it) stops both servers and exits 0,
// so make reports no error.
func TestRailsChatDemo(t *testing.T) {
	t.Parallel()
	requireRails(t)
	actionCableJS(t)
	ports := []int{FreePort(t), FreePort(t), FreePort(t)}
	out := &Output{}
	cmd := exec.Command("bash", filepath.Join(RepoRoot(t), "examples", "rails_chat", "demo.sh"))
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(cleanEnv(), "CABLECAR_BIN="+CablecarBinary(t),
		"RAILS_CHAT_PORT="+strconv.Itoa(ports[0]), "RAILS_CHAT_APP_PORT="+strconv.Itoa(ports[1]),
		"RAILS_CHAT_ADMIN_PORT="+strconv.Itoa(ports[2]))
	cmd.Stdout, cmd.Stderr = out, out
	dumpOnFailure(t, "make demo-rails", out)
	p := startProcess(t, "demo.sh", cmd)
	t.Cleanup(func() { p.stop(syscall.SIGINT, 20*time.Second) })

	site := "http://localhost:" + strconv.Itoa(ports[0])
	WaitFor(t, 90*time.Second, "the demo to print its URL", func() bool {
		return p.exited() || strings.Contains(out.String(), site+"/")
	})
	if p.exited() {
		t.Fatalf("demo.sh exited before printing the URL: %v", p.err)
	}
	code, body, err := get(http.DefaultClient, site+"/", 5*time.Second)
	if err != nil || code != 200 || !strings.Contains(body, "Rails chat") {
		t.Fatalf("GET / through the demo: %d %v %.200q", code, err, body)
	}

	p.signalGroup(syscall.SIGINT)
	if !p.wait(30 * time.Second) {
		t.Fatal("demo.sh did not exit within 30 s of Ctrl-C")
	}
	if code := p.exitCode(); code != 0 {
		t.Errorf("demo.sh exited %d after Ctrl-C, want 0 (make would report an error)", code)
	}
	WaitFor(t, 10*time.Second, "the demo's ports to be free", func() bool {
		for _, port := range ports {
			if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
				c.Close()
				return false
			}
		}
		return true
	})
}

// railsChatLogin signs in through the example's form and lands in the
// lobby.
func (p *Page) railsChatLogin(site, name string) {
	p.t.Helper()
	p.Do("signing in as "+name,
		chromedp.Navigate(site+"/"),
		chromedp.WaitVisible(chromedp.CSS(`input[name="name"]`)),
		chromedp.SetValue(chromedp.CSS(`input[name="name"]`), name),
		chromedp.Click(chromedp.CSS(`input[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#say`)),
	)
}

// railsChatConnected waits until ChatChannel's subscription has been
// confirmed n times in all and Turbo's stream source is connected.
func (p *Page) railsChatConnected(n int) {
	p.t.Helper()
	p.railsChatConnectedWithin(pageWait, n)
}

func (p *Page) railsChatConnectedWithin(d time.Duration, n int) {
	p.t.Helper()
	p.WaitJSWithin(d, fmt.Sprintf("ChatChannel confirmed %d times and the Turbo stream source connected", n), fmt.Sprintf(
		`document.getElementById("state").dataset.connects === "%d" &&
		 document.getElementById("state").dataset.state === "online" &&
		 document.querySelector("turbo-cable-stream-source").hasAttribute("connected")`, n))
}

func (p *Page) railsChatSay(text string) {
	p.t.Helper()
	p.Do("saying "+text,
		chromedp.SetValue(chromedp.CSS(`#say input[name="text"]`), text),
		chromedp.Click(chromedp.CSS(`#say button`)),
	)
}

func (p *Page) railsChatWaitSaid(user, text string) {
	p.t.Helper()
	p.WaitJS(fmt.Sprintf("%s saying %q", user, text), fmt.Sprintf(
		`[...document.querySelectorAll("#messages li")].some(li => li.textContent.trim() === %s)`, jsString(user+" "+text)))
}

func (p *Page) railsChatWaitStats(want string) {
	p.t.Helper()
	p.WaitJS("the room's count "+strconv.Quote(want), fmt.Sprintf(
		`document.getElementById("stats").textContent.replace(/\s+/g, " ").trim() === %s`, jsString(want)))
}
