package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/cablecar/cablecar/actioncable"
)

// BenchmarkSessionRestart measures what a SIGTERM restart of a node costs
// when its ActionCable ext clients come back (SPEC §10): the time from
// the new node being ready until every client is back and subscribed, and
// the requests the app got for it, with session restore on and off.
//
//	BENCH_SESSION_CONNS=5000 go test -run '^$' -bench BenchmarkSessionRestart -benchtime 1x ./e2e/
func BenchmarkSessionRestart(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("BENCH_SESSION_CONNS")); err == nil && v > 0 && v <= 15000 {
		n = v
	}
	for _, mode := range []struct {
		name string
		ttl  string
	}{{"restore", "2m"}, {"no-restore", "0s"}} {
		b.Run(fmt.Sprintf("%s/%d", mode.name, n), func(b *testing.B) {
			for range b.N {
				benchSessionRestart(b, n, mode.ttl)
			}
		})
	}
}

type appCount struct {
	Accepts       int `json:"accepts"`
	EventRequests int `json:"event_requests"`
	Events        int `json:"events"`
}

func acCount(b *testing.B, p *Puma) appCount {
	resp, err := p.Client().Get(p.URL + "/_count")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var c appCount
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		b.Fatal(err)
	}
	return c
}

// benchClient is one ext client: its socket, sid and subscription.
type benchClient struct {
	ws    *websocket.Conn
	sid   string
	ident string
	gone  chan struct{}
}

func benchSessionRestart(b *testing.B, n int, ttl string) {
	r := StartRedis(b)
	p := StartPuma(b, PumaOptions{Rackup: RepoRoot(b) + "/testdata/acapp/config.ru"})
	cfg := map[string]any{
		"log.level":                 "warn",
		"broker.url":                r.URL,
		"actioncable.session_ttl":   ttl,
		"actioncable.ping_interval": "60s",
		"websocket.ping_interval":   "60s",
		"websocket.pong_timeout":    "600s",
		"callback.max_in_flight":    64,
		// The first connects load a cold Puma; they are not what is measured.
		"callback.timeout": "30s",
	}
	a := StartCablecar(b, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	WaitFor(b, 15*time.Second, "readyz", func() bool { return a.AdminStatus("/readyz") == 200 })
	target := wsURL(a.URL) + "/cable"
	dialer := websocket.Dialer{HandshakeTimeout: 60 * time.Second, Subprotocols: []string{actioncable.ExtName}}

	// connect dials (with sid when not ""), and subscribes unless restored.
	connect := func(cl *benchClient, sid string) error {
		u := target
		if sid != "" {
			u += "?sid=" + url.QueryEscape(sid)
		}
		ws, _, err := dialer.Dial(u, http.Header{})
		if err != nil {
			return err
		}
		ws.SetReadDeadline(time.Now().Add(60 * time.Second))
		var w struct {
			Type     string `json:"type"`
			SID      string `json:"sid"`
			Restored bool   `json:"restored"`
		}
		if err := ws.ReadJSON(&w); err != nil || w.Type != "welcome" {
			return fmt.Errorf("welcome: %v %+v", err, w)
		}
		cl.ws, cl.sid, cl.gone = ws, w.SID, make(chan struct{})
		if !w.Restored {
			ws.WriteJSON(map[string]string{"command": "subscribe", "identifier": cl.ident})
			for {
				var f map[string]any
				if err := ws.ReadJSON(&f); err != nil {
					return err
				}
				if f["type"] == "confirm_subscription" {
					break
				}
			}
		}
		ws.SetReadDeadline(time.Time{})
		go func() {
			defer close(cl.gone)
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					ws.Close()
					return
				}
			}
		}()
		return nil
	}
	all := func(f func(cl *benchClient) error, clients []*benchClient) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		errs := make(chan error, len(clients))
		for _, cl := range clients {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := f(cl); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	clients := make([]*benchClient, n)
	for j := range clients {
		clients[j] = &benchClient{ident: acID("ChatChannel", map[string]any{"room": strconv.Itoa(j % 100)})}
	}
	all(func(cl *benchClient) error {
		var err error
		for range 5 { // a cold app may turn some away (503): not what is measured
			if err = connect(cl, ""); err == nil {
				return nil
			}
			time.Sleep(time.Second)
		}
		return err
	}, clients)
	before := acCount(b, p)

	b.Logf("connected %d", n)
	t0 := time.Now()
	a.Signal(syscall.SIGTERM)
	for _, cl := range clients {
		<-cl.gone
	}
	b.Logf("all closed after %v", time.Since(t0))
	if _, err := a.Wait(60 * time.Second); err != nil {
		b.Fatal(err)
	}
	b.Logf("exited after %v", time.Since(t0))
	cfg["listen"] = a.Addr
	a2 := StartCablecar(b, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	WaitFor(b, 15*time.Second, "readyz", func() bool { return a2.AdminStatus("/readyz") == 200 })
	ready := acCount(b, p)
	start := time.Now()
	all(func(cl *benchClient) error {
		sid := ""
		if ttl != "0s" {
			sid = cl.sid
		}
		return connect(cl, sid)
	}, clients)
	took := time.Since(start)
	after := acCount(b, p)
	for _, cl := range clients {
		cl.ws.Close()
	}
	b.ReportMetric(took.Seconds(), "s-all-back")
	b.ReportMetric(float64(after.Accepts-ready.Accepts+after.EventRequests-ready.EventRequests), "app-requests-reconnecting")
	b.ReportMetric(float64(after.Accepts-before.Accepts+after.EventRequests-before.EventRequests), "app-requests-whole-restart")
	b.ReportMetric(float64(after.Accepts-ready.Accepts), "accepts")
	b.ReportMetric(float64(after.Events-ready.Events), "events")
}
