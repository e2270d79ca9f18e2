package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/fasthttp/websocket"
)

// The status page (SPEC §4: GET / on the admin listener) in headless
// Chromium at 1280×800, on a node of two sharing Redis, under a bounded
// load of WebSocket clients talking to the Puma test app: it asks for the
// api_key, takes it, and shows what /metrics says; the key is never in a
// URL the browser requests. The screenshot is kept in artifacts/.
//
//	go test -race -count=1 -run TestStatusPage ./e2e/
func TestStatusPage(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	key := "status-key-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	nodes := startNodes(t, p, 2, r.URL, map[string]any{"admin.api_key": key})
	a, b := nodes[0], nodes[1]

	busy, calm := channel("busy"), channel("calm")
	path := "/ws/status/" + NewTag(t)
	var clients []*WSClient
	for i := range 16 {
		ch := busy
		if i >= 12 {
			ch = calm
		}
		ws, _ := joinWS(t, a, p, path, ch)
		clients = append(clients, ws)
	}
	for range 3 {
		joinWS(t, b, p, path, busy)
	}
	// Refused by the app: three handshakes.
	for range 3 {
		if _, resp, err := DialWS(t, a.URL+"/ws/reject401/"+NewTag(t), nil); err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("a handshake the app refuses: %v %v", resp, err)
		}
	}

	// The guard stands on the page and its data: another site's page is
	// refused, key or not.
	for _, path := range []string{"/", "/status.json"} {
		if code, body := adminDo(t, a, "GET", path, "", map[string]string{"Origin": "http://evil.example",
			"Authorization": "Bearer " + key}); code != 403 {
			t.Errorf("GET %s from another site's page: %d %.100q, want 403", path, code, body)
		}
	}
	if code, _ := adminDo(t, a, "GET", "/status.json", "", nil); code != 401 {
		t.Errorf("GET /status.json without the key: %d, want 401", code)
	}

	br := StartBrowser(t)
	page := br.NewPage("status")
	var (
		mu       sync.Mutex
		requests []*network.Request
		problems []string
	)
	if err := chromedp.Listen(page.ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			requests = append(requests, ev.Request)
		case *log.EventEntryAdded:
			// A Content-Security-Policy violation (the page's own script
			// or style refused) is logged here.
			if ev.Entry.Level == log.EntryLevelError && ev.Entry.Source != log.EntrySourceNetwork {
				problems = append(problems, ev.Entry.Text)
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	page.Do("open the status page", chromedp.EmulateViewport(1280, 800), chromedp.Navigate(a.AdminURL+"/"))

	// The key is asked for; a wrong one is refused; the right one shows
	// the status.
	page.WaitJS("the key form", `!document.getElementById("keyform").hidden && document.getElementById("main").hidden`)
	page.Do("a wrong key", chromedp.SendKeys("#apikey", "not-the-key"), chromedp.Click(`#keyform button`))
	page.WaitJS("the wrong key refused", `!document.getElementById("keyform").hidden &&
		document.getElementById("keymsg").textContent.includes("refused")`)
	page.Do("the key", chromedp.SendKeys("#apikey", key), chromedp.Click(`#keyform button`))
	page.WaitJS("the status shown", `!document.getElementById("main").hidden && document.body.dataset.updated`)

	// Load: each client of A sends a message, waits for its echo, and
	// again; the test publishes to the busy channel meanwhile.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var echoed atomic.Int64
	errs := make(chan error, len(clients))
	for i, ws := range clients {
		wg.Go(func() {
			if err := echoLoop(ws.Conn, i, stop, &echoed); err != nil {
				errs <- err
			}
		})
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopLoad)
	for i := range 30 {
		MustAdminPost(t, a, "/publish", map[string]any{"channel": busy, "data": fmt.Sprintf("news %d", i)}, key)
	}
	page.WaitJSWithin(20*time.Second, "the rates under load", `(() => {
		const n = (id) => parseFloat(document.getElementById(id).textContent.replace(/,/g, ""));
		return n("msgs-in-rate") > 0 && n("msgs-out-rate") > 0 && n("wh-rate") > 0 &&
			document.getElementById("wh-p50").textContent !== "–" &&
			document.querySelectorAll("#chart-msgs polyline").length > 0;
	})()`)
	stopLoad()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if echoed.Load() == 0 {
		t.Fatal("no message came back under load")
	}
	// Two clients of the busy channel leave.
	for _, ws := range clients[:2] {
		ws.CloseWith(wsWait, 1000, "bye")
	}

	// Once the load is over, what the page shows is what /metrics says.
	shown := func() map[string]string {
		return EvalJS[map[string]string](page, `(() => {
			const out = {};
			for (const id of ["conns", "accepts-total", "refusals-total", "msgs-in-total", "msgs-out-total", "wh-total",
				"wh-retries-total", "wh-failures-total", "wh-inflight", "wh-cap", "channels-total"]) {
				out[id] = document.getElementById(id).textContent.replace(/,/g, "");
			}
			for (const t of ["closes", "refusals", "channels", "nodes"]) {
				for (const tr of document.getElementById(t).tBodies[0].rows) {
					if (tr.cells.length < 2) continue; // "none yet"
					// The total (the connections for a node), not the rate.
					out[t + ":" + tr.cells[0].textContent] = tr.cells[t === "nodes" ? 2 : 1].textContent.replace(/,/g, "") +
						(t === "nodes" ? " " + tr.cells[1].textContent : "");
				}
			}
			return out;
		})()`)
	}
	var got, want map[string]string
	ok := poll(20*time.Second, func() bool {
		m := a.Metrics()
		v := func(name string, labels ...string) string {
			f, _ := MetricValue(m, name, labels...)
			return strconv.FormatFloat(f, 'f', -1, 64)
		}
		want = map[string]string{
			"conns":                                 v("cablecar_connections"),
			"accepts-total":                         v("cablecar_upgrades_total", "result=accepted"),
			"refusals-total":                        v("cablecar_upgrades_total", "result=rejected"),
			"msgs-in-total":                         v("cablecar_messages_total", "direction=in"),
			"msgs-out-total":                        v("cablecar_messages_total", "direction=out"),
			"wh-total":                              v("cablecar_webhooks_total"),
			"wh-retries-total":                      v("cablecar_webhook_retries_total"),
			"wh-failures-total":                     "0",
			"wh-inflight":                           v("cablecar_webhooks_in_flight"),
			"wh-cap":                                "256",
			"channels-total":                        "2",
			"closes:client":                         v("cablecar_closes_total", "by=client"),
			"refusals:app":                          v("cablecar_upgrades_total", "result=rejected", "reason=app"),
			"channels:" + busy:                      "10",
			"channels:" + calm:                      "4",
			"nodes:" + nodeID(t, a) + " (this one)": "14 held",
			"nodes:" + nodeID(t, b):                 "3 held",
		}
		got = shown()
		if len(got) != len(want) {
			return false
		}
		for k, w := range want {
			if got[k] != w {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("the page shows\n%v\nwhile /metrics says\n%v", got, want)
	}
	if want["conns"] != "14" || want["refusals:app"] != "3" || want["closes:client"] != "2" {
		t.Errorf("the node under test: %v; want 14 connections, 3 refused by the app, 2 closed by their client", want)
	}
	if bg := EvalJS[string](page, `getComputedStyle(document.body).backgroundColor`); bg == "rgba(0, 0, 0, 0)" {
		t.Errorf("the page's style did not apply (background %s): its CSP hash is wrong?", bg)
	}
	page.Screenshot("status-page.png")

	// The key went in the Authorization header of every request for the
	// data once given, and never in any URL.
	mu.Lock()
	defer mu.Unlock()
	var withKey int
	for _, req := range requests {
		if strings.Contains(req.URL, key) || strings.Contains(req.URLFragment, key) {
			t.Errorf("the key is in a URL the browser requested: %s", req.URL)
		}
		if strings.HasSuffix(req.URL, "/status.json") && fmt.Sprint(req.Headers["Authorization"]) == "Bearer "+key {
			withKey++
		}
	}
	if withKey < 3 {
		t.Errorf("%d requests for status.json carried the key as Authorization, want every one after it was given (%d requests)", withKey, len(requests))
	}
	if strings.Contains(a.Logs(), key) {
		t.Error("the key is in the node's log")
	}
	if len(problems) > 0 {
		t.Errorf("the browser logged errors: %q", problems)
	}
}

// echoLoop sends echo commands on conn and waits for each to come back,
// reading past the broadcasts it also gets, until stop is closed or 300
// round trips are done; then it drains what comes until the connection
// closes.
func echoLoop(conn *websocket.Conn, n int, stop <-chan struct{}, echoed *atomic.Int64) error {
	for i := 0; i < 300; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		want := fmt.Sprintf("c%d-%d", n, i)
		_ = conn.SetWriteDeadline(time.Now().Add(wsTimeout))
		if err := conn.WriteMessage(websocket.TextMessage, []byte("echo:"+want)); err != nil {
			return fmt.Errorf("client %d: sending: %w", n, err)
		}
		for {
			_ = conn.SetReadDeadline(time.Now().Add(wsWait))
			_, data, err := conn.ReadMessage()
			if err != nil {
				return fmt.Errorf("client %d: waiting for %s: %w", n, want, err)
			}
			if string(data) == want {
				echoed.Add(1)
				break
			}
		}
	}
	return nil
}

// nodeID is the node id a binary logged at start-up.
func nodeID(t *testing.T, c *Cablecar) string {
	t.Helper()
	l := c.WaitLog(5*time.Second, "the node id in the log", func(l LogLine) bool { return l.Str("node") != "" })
	return l.Str("node")
}
