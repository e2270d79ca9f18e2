package e2e

import (
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The presence example (examples/presence, seed 001's device dashboard) in
// headless Chromium: a device that goes silent without closing its socket
// turns red within ping_interval + pong_timeout + leave_delay (with a
// generous margin), comes back green, and a device that reconnects before
// its old socket is found dead never turns red. Needs presence (SPEC §11:
// Cablecar-Presence, Cablecar-Presence-Events, GET /presence). Run with
//
//	go test -race -count=1 -run 'TestPresenceExample' ./e2e/

const (
	presencePing  = time.Second
	presencePong  = 2 * time.Second
	presenceLeave = time.Second
	// What detection may take by the contract, and the margin a loaded
	// machine gets on top.
	presenceBound  = presencePing + presencePong + presenceLeave
	presenceMargin = 6 * time.Second
)

// deviceSim is examples/presence/device, built for the test and driven
// over its control port.
type deviceSim struct {
	t       *testing.T
	control string
	client  *http.Client
}

func startDevices(t *testing.T, proxyURL string, ids ...string) *deviceSim {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "device")
	build := exec.Command("go", "build", "-o", bin, "./examples/presence/device")
	build.Dir = RepoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the device simulator: %v\n%s", err, out)
	}
	out := &Output{}
	args := append([]string{"-url", wsURL(proxyURL), "-control", "127.0.0.1:0"}, ids...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	dumpOnFailure(t, "the device simulator", out)
	p := startProcess(t, "device", cmd)
	t.Cleanup(func() { p.stop(syscall.SIGTERM, 5*time.Second) })
	addr := regexp.MustCompile(`control on (http://\S+)`)
	var control string
	WaitFor(t, 10*time.Second, "the simulator's control address", func() bool {
		if m := addr.FindStringSubmatch(out.String()); m != nil {
			control = m[1]
			return true
		}
		return p.exited()
	})
	if control == "" {
		t.Fatalf("the device simulator exited: %v", p.err)
	}
	return &deviceSim{t: t, control: control, client: &http.Client{Timeout: 5 * time.Second}}
}

func (d *deviceSim) do(cmd, id string) {
	d.t.Helper()
	resp, err := d.client.Post(d.control+"/"+cmd+"?id="+id, "text/plain", nil)
	if err != nil {
		d.t.Fatalf("device %s %s: %v", cmd, id, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		d.t.Fatalf("device %s %s: %d", cmd, id, resp.StatusCode)
	}
}

// dotJS is true when the device's dot shows online (want "true") or
// offline ("false").
func dotJS(id, want string) string {
	return `(document.querySelector('li[data-id="` + id + `"]') || {dataset: {}}).dataset.online === "` + want + `"`
}

func TestPresenceExample(t *testing.T) {
	t.Parallel()
	const secret = "presence-example-secret"
	root := RepoRoot(t)
	port := FreePort(t)
	c := StartCablecar(t, CablecarOptions{Upstream: "http://127.0.0.1:" + strconv.Itoa(port), Config: map[string]any{
		"callback.secret":          secret,
		"websocket.ping_interval":  presencePing.String(),
		"websocket.pong_timeout":   presencePong.String(),
		"presence.leave_delay":     presenceLeave.String(),
		"websocket.shutdown_grace": "0s",
	}})
	StartPuma(t, PumaOptions{Port: port, Rackup: filepath.Join(root, "examples", "presence", "config.ru"),
		Env: map[string]string{
			"RUBYLIB":                  filepath.Join(root, "ruby", "lib"),
			"CABLECAR_CALLBACK_SECRET": secret,
			"CABLECAR_ADMIN_URL":       c.AdminURL,
			"PRESENCE_DEVICES":         "thermostat:Thermostat,doorbell:Front door",
		}})
	devices := startDevices(t, c.URL, "thermostat", "doorbell")
	b := StartBrowser(t)
	page := b.NewPage("dashboard")
	page.Do("opening the dashboard", chromedp.Navigate(c.URL+"/"))
	page.WaitJSWithin(20*time.Second, "the dashboard live with both devices online",
		`document.body.dataset.live === "true" && `+dotJS("thermostat", "true")+` && `+dotJS("doorbell", "true"))

	// Airplane mode: the socket stays open and silent. Cablecar finds it
	// dead (ping_interval + pong_timeout), and the device leaves
	// leave_delay later.
	devices.do("off", "thermostat")
	off := time.Now()
	page.WaitJSWithin(presenceBound+presenceMargin, "the thermostat's dot to turn red", dotJS("thermostat", "false"))
	took := time.Since(off)
	t.Logf("red %v after the thermostat went silent (ping_interval + pong_timeout + leave_delay = %v)",
		took.Round(10*time.Millisecond), presenceBound)
	if EvalJS[bool](page, dotJS("doorbell", "false")) {
		t.Fatal("the doorbell turned red too")
	}
	page.Screenshot("presence-dashboard-offline.png")

	devices.do("on", "thermostat")
	page.WaitJSWithin(15*time.Second, "the thermostat back online", dotJS("thermostat", "true"))

	// The seed's race: the doorbell reconnects while its old socket is
	// still open; Cablecar finds the old one dead later. Its dot must
	// never turn red: sampled on the page every 50 ms, and every change
	// the page made is in window.dotChanges.
	timeouts := c.Metric("cablecar_closes_total", "by=timeout")
	changesBefore := EvalJS[int](page, `window.dotChanges.length`)
	devices.do("swap", "doorbell")
	swapped := time.Now()
	var oldGone time.Time
	deadline := swapped.Add(presenceBound + 2*presenceMargin)
	samples := 0
	for time.Now().Before(deadline) {
		if EvalJS[bool](page, dotJS("doorbell", "false")) {
			page.Screenshot("presence-dashboard-flicker.png")
			t.Fatalf("the doorbell's dot turned red %v after it reconnected", time.Since(swapped).Round(10*time.Millisecond))
		}
		samples++
		if oldGone.IsZero() && samples%10 == 0 && c.Metric("cablecar_closes_total", "by=timeout") > timeouts {
			oldGone = time.Now()
			// Sample on past the leave delay of the old socket's close.
			deadline = oldGone.Add(presenceLeave + presenceMargin/2)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if oldGone.IsZero() {
		t.Fatalf("the doorbell's old socket was not found dead within %v: the test proved nothing", presenceBound+2*presenceMargin)
	}
	changes := EvalJS[[]map[string]any](page, `window.dotChanges.slice(`+strconv.Itoa(changesBefore)+`)`)
	for _, ch := range changes {
		if ch["id"] == "doorbell" {
			t.Fatalf("the doorbell's dot changed after the swap: %v", changes)
		}
	}
	t.Logf("doorbell green throughout: %d samples over %v; its old socket was found dead %v after the swap",
		samples, time.Since(swapped).Round(10*time.Millisecond), oldGone.Sub(swapped).Round(10*time.Millisecond))
	if !strings.Contains(EvalJS[string](page, `document.getElementById("state").textContent`), "live") {
		t.Error("the dashboard is no longer live")
	}
	page.Screenshot("presence-dashboard.png")
}
