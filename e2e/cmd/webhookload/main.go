//go:build linux

// Command webhookload measures how many events a second Cablecar turns
// into webhooks (SPEC §3), from processes of its own so that Cablecar's CPU
// is its alone.
//
// It has two roles. With -serve ADDR it is the fast upstream: it accepts
// every handshake (Cablecar-Accept: websocket) and counts the events and
// the requests that carry them, answering each event request with
// {"send":["ok"]} (one reply frame per request) — or 204 with -quiet. Its
// counts are at GET /stats. With -subscribe it is the app of a broadcast
// benchmark (make bench-peers): every accept subscribes to those channels.
//
// Without -serve it is the load: it opens -n WebSockets to -url and has
// each send -msgs messages, in one of two modes:
//
//   - paced: a client sends its next message only once the reply to the
//     previous one came back. Nothing queues behind an event in flight, so
//     every request carries one event: webhooks without batching.
//   - burst: a client sends all its messages at once. Events queue behind
//     the one in flight and go together in the next request: webhooks with
//     batching.
//
// It reports events per second (as counted by the upstream), events per
// request, and, with -pid, Cablecar's CPU per event (utime+stime from
// /proc/<pid>/stat); its own CPU separately. One JSON line goes to stdout.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// Bounds that keep a mistyped flag from becoming an unbounded run: this
// machine allows 20,000 open files per process.
const (
	maxConns = 19000
	maxMsgs  = 100000
)

type result struct {
	Mode           string  `json:"mode"`
	Conns          int     `json:"conns"`
	MsgsPerConn    int     `json:"msgs_per_conn"`
	Events         int64   `json:"events"`
	Requests       int64   `json:"requests"`
	EventsPerReq   float64 `json:"events_per_request"`
	PhaseS         float64 `json:"phase_s"`
	EventsPerS     float64 `json:"events_per_s"`
	ServerCPUS     float64 `json:"server_cpu_s,omitempty"`
	ServerUsPerEv  float64 `json:"server_cpu_us_per_event,omitempty"`
	AppCPUS        float64 `json:"app_cpu_s,omitempty"`
	ClientCPUS     float64 `json:"client_cpu_s"`
	ClientsDropped int64   `json:"clients_dropped"`
}

func main() {
	serve := flag.String("serve", "", "run as the upstream on this address (127.0.0.1:port)")
	quiet := flag.Bool("quiet", false, "upstream: answer events with 204 instead of a reply")
	subscribe := flag.String("subscribe", "", "upstream: Cablecar-Subscribe of every accept (for broadcast benchmarks)")
	events := flag.String("events", "message", "upstream: Cablecar-Events of every accept")
	url := flag.String("url", "", "ws:// URL of Cablecar")
	stats := flag.String("stats", "", "the upstream's http://host:port, for its counts")
	n := flag.Int("n", 1000, "connections")
	msgs := flag.Int("msgs", 100, "messages per connection")
	mode := flag.String("mode", "paced", "paced (one event per request) or burst (batched)")
	pid := flag.Int("pid", 0, "Cablecar's pid, for its CPU")
	appPID := flag.Int("app-pid", 0, "the upstream's pid, for its CPU")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()

	if *serve != "" {
		if err := runUpstream(*serve, *quiet, *subscribe, *events); err != nil {
			fmt.Fprintln(os.Stderr, "webhookload:", err)
			os.Exit(1)
		}
		return
	}
	if *url == "" || *stats == "" || *n < 1 || *n > maxConns || *msgs < 1 || *msgs > maxMsgs ||
		(*mode != "paced" && *mode != "burst") {
		fmt.Fprintf(os.Stderr, "webhookload: need -url, -stats, 1 ≤ -n ≤ %d, 1 ≤ -msgs ≤ %d, -mode paced|burst\n", maxConns, maxMsgs)
		os.Exit(2)
	}
	r, err := runLoad(*url, *stats, *mode, *n, *msgs, *pid, *appPID, *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "webhookload:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
	fmt.Fprintf(os.Stderr, "webhookload: %s, %d conns × %d msgs: %.0f events/s, %.2f events/request, Cablecar %.2f µs CPU/event\n",
		r.Mode, r.Conns, r.MsgsPerConn, r.EventsPerS, r.EventsPerReq, r.ServerUsPerEv)
}

// upstream counts what Cablecar posts. Events are counted from the body
// without decoding it whole: each event has exactly one `"type":"`.
type upstream struct {
	events, requests, opens atomic.Int64
}

var (
	typeKey     = []byte(`"type":"`)
	typeMessage = []byte(`"type":"message"`)
	replyOK     = []byte(`{"send":["ok"]}`)
	appJSON     = []byte("application/json")
)

func runUpstream(addr string, quiet bool, subscribe, events string) error {
	u := &upstream{}
	srv := &fasthttp.Server{
		Name:                          "webhookload",
		NoDefaultDate:                 true,
		DisableHeaderNamesNormalizing: true,
		Concurrency:                   100000,
		Handler: func(ctx *fasthttp.RequestCtx) {
			switch {
			case ctx.IsGet() && string(ctx.Path()) == "/stats":
				fmt.Fprintf(ctx, `{"events":%d,"requests":%d,"opens":%d}`, u.events.Load(), u.requests.Load(), u.opens.Load())
			case ctx.IsGet():
				ctx.Response.Header.Set("Cablecar-Accept", "websocket")
				ctx.Response.Header.Set("Cablecar-Events", events)
				if subscribe != "" {
					ctx.Response.Header.Set("Cablecar-Subscribe", subscribe)
				}
				u.opens.Add(1)
			default:
				body := ctx.PostBody()
				u.requests.Add(1)
				u.events.Add(int64(countOf(body, typeMessage)))
				if quiet || countOf(body, typeKey) == 0 {
					ctx.SetStatusCode(fasthttp.StatusNoContent)
					return
				}
				ctx.Response.Header.SetContentTypeBytes(appJSON)
				ctx.SetBody(replyOK)
			}
		},
	}
	return srv.ListenAndServe(addr)
}

func countOf(b, sub []byte) int {
	n := 0
	for {
		i := bytes.Index(b, sub)
		if i < 0 {
			return n
		}
		n++
		b = b[i+len(sub):]
	}
}

type counts struct {
	Events, Requests, Opens int64
}

func readStats(base string) (counts, error) {
	var c counts
	resp, err := http.Get(base + "/stats")
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&c)
	return c, err
}

func runLoad(url, stats, mode string, n, msgs, pid, appPID int, timeout time.Duration) (*result, error) {
	deadline := time.Now().Add(timeout)
	dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		c, _, err := dialer.Dial(url, nil)
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("dial %d: %w", i, err)
		}
		conns[i] = c
	}
	defer closeAll(conns)
	before, err := readStats(stats)
	if err != nil {
		return nil, err
	}
	want := before.Events + int64(n*msgs)
	cpu0, app0, self0 := procCPU(pid), procCPU(appPID), selfCPU()
	start := time.Now()

	var dropped atomic.Int64
	var wg sync.WaitGroup
	payload := []byte("hello from a client")
	for _, c := range conns {
		wg.Add(1)
		go func(c *websocket.Conn) {
			defer wg.Done()
			_ = c.SetReadDeadline(deadline)
			if err := drive(c, mode, msgs, payload); err != nil {
				dropped.Add(1)
			}
		}(c)
	}
	wg.Wait()
	// Every message read by Cablecar is an event the upstream must count;
	// in burst mode the replies to batches are fewer than the messages, so
	// wait on the upstream's count, bounded.
	var after counts
	for {
		if after, err = readStats(stats); err != nil {
			return nil, err
		}
		if after.Events >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	phase := time.Since(start).Seconds()
	r := &result{
		Mode: mode, Conns: n, MsgsPerConn: msgs,
		Events: after.Events - before.Events, Requests: after.Requests - before.Requests,
		PhaseS: phase, ClientCPUS: selfCPU() - self0, ClientsDropped: dropped.Load(),
	}
	if r.Events < int64(n*msgs) {
		return r, fmt.Errorf("the upstream counted %d events of %d within %s", r.Events, n*msgs, timeout)
	}
	r.EventsPerS = float64(r.Events) / phase
	if r.Requests > 0 {
		r.EventsPerReq = float64(r.Events) / float64(r.Requests)
	}
	if pid > 0 {
		r.ServerCPUS = procCPU(pid) - cpu0
		r.ServerUsPerEv = r.ServerCPUS / float64(r.Events) * 1e6
	}
	if appPID > 0 {
		r.AppCPUS = procCPU(appPID) - app0
	}
	return r, nil
}

// drive sends one client's messages. Paced: one at a time, each after the
// reply to the one before. Burst: all at once, then the replies are read
// until the last message's reply could have come (one per request, so
// fewer than the messages) — the upstream's count says when all arrived.
func drive(c *websocket.Conn, mode string, msgs int, payload []byte) error {
	if mode == "paced" {
		for range msgs {
			if err := c.WriteMessage(websocket.TextMessage, payload); err != nil {
				return err
			}
			if _, _, err := c.ReadMessage(); err != nil {
				return err
			}
		}
		return nil
	}
	for range msgs {
		if err := c.WriteMessage(websocket.TextMessage, payload); err != nil {
			return err
		}
	}
	return nil
}

func closeAll(conns []*websocket.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// procCPU is a process's utime+stime in seconds, 0 without a pid.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after
	// the last ')'; utime and stime are the 12th and 13th of those.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0
	}
	return (ut + st) / 100 // USER_HZ
}

func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
