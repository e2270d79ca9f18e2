//go:build linux

// Command cablebench measures an ActionCable server — ActionCable inside
// Puma, or Cablecar in front of an app — with @rails/actioncable-shaped
// clients in a process of its own (make bench-rails, e2e/bench/rails.sh):
//
//  1. -n clients dial -url offering actioncable-v1-json (-c at a time, their
//     source addresses spread over 127.0.0.2 … 127.0.0.<1+sources>), and
//     read their welcome;
//  2. all of them subscribe with -identifier at once: subscribes/s is n over
//     the time to the last confirm_subscription;
//  3. idle for -settle: the total resident memory of -pids (VmRSS summed,
//     read before the first dial and now) and -stats' answer (the app's
//     Puma thread pool) are taken;
//  4. -broadcasts times, GET -broadcast with &seq=k: the time from sending
//     that request to the last of the n clients receiving the message
//     ({"identifier":…,"message":{"seq":k}}), one broadcast at a time;
//  5. -performs per client, all clients at once: every client sends
//     {"command":"message",…"data":"{\"action\":\"echo\",\"e\":1}"} and waits
//     for its echo before the next; performs/s is the total over the time to
//     the last echo.
//
// ActionCable's own pings ({"type":"ping"}) and WebSocket pings are
// answered or ignored as the browser client does. One JSON line goes to
// stdout, one line for people to stderr.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
)

// This machine allows 20,000 open files per process.
const maxConns = 19000

type result struct {
	Conns          int            `json:"conns"`
	ConnectS       float64        `json:"connect_s"`
	SubscribePerS  float64        `json:"subscribes_per_s"`
	RSSBefore      int64          `json:"rss_bytes_before"`
	RSSIdle        int64          `json:"rss_bytes_idle"`
	RSSPerConn     float64        `json:"rss_bytes_per_conn"`
	Stats          map[string]any `json:"stats,omitempty"`
	BroadcastMs    []float64      `json:"broadcast_to_all_ms"`
	BroadcastP50Ms float64        `json:"broadcast_to_all_p50_ms"`
	BroadcastMaxMs float64        `json:"broadcast_to_all_max_ms"`
	Performs       int            `json:"performs"`
	PerformPerS    float64        `json:"performs_per_s,omitempty"`
	Dropped        int64          `json:"clients_dropped"`
	ProtocolPings  int64          `json:"protocol_pings"`
}

var (
	confirmTag = []byte(`"type":"confirm_subscription"`)
	seqTag     = []byte(`"seq":`)
	echoTag    = []byte(`"e":1`)
	pingTag    = []byte(`"type":"ping"`)
)

type client struct {
	ws   *websocket.Conn
	seq  atomic.Int64 // the highest broadcast seq received
	echo chan struct{}
}

func main() {
	var (
		url        = flag.String("url", "", "WebSocket URL, e.g. ws://127.0.0.1:3000/cable")
		identifier = flag.String("identifier", `{"channel":"BenchChannel","stream":"bench"}`, "subscription identifier (JSON text)")
		broadcast  = flag.String("broadcast", "", "URL whose GET (with &seq=k added) broadcasts to the stream")
		stats      = flag.String("stats", "", "URL answering the app's JSON stats (optional)")
		pids       = flag.String("pids", "", "comma-separated process ids whose RSS is summed")
		n          = flag.Int("n", 1000, "clients")
		c          = flag.Int("c", 16, "dials in flight")
		sources    = flag.Int("sources", 200, "source addresses 127.0.0.2 … 127.0.0.<1+N>")
		broadcasts = flag.Int("broadcasts", 5, "broadcasts, one at a time")
		performs   = flag.Int("performs", 2, "performs per client (0: none)")
		settle     = flag.Duration("settle", 5*time.Second, "idle time before memory is read")
		wait       = flag.Duration("wait", 120*time.Second, "longest wait for any phase")
	)
	flag.Parse()
	if *url == "" || *broadcast == "" || *n < 1 || *n > maxConns || *c < 1 || *sources < 1 || *sources > 250 || *broadcasts < 1 || *performs < 0 {
		fmt.Fprintf(os.Stderr, "cablebench: -url and -broadcast are required; 1 ≤ -n ≤ %d, 1 ≤ -sources ≤ 250\n", maxConns)
		os.Exit(2)
	}
	res, err := run(*url, *identifier, *broadcast, *stats, *pids, *n, *c, *sources, *broadcasts, *performs, *settle, *wait)
	if res != nil {
		line, _ := json.Marshal(res)
		fmt.Println(string(line))
		fmt.Fprintf(os.Stderr, "cablebench: %d clients in %.1f s; %.0f subscribes/s; RSS %.1f MiB idle (%.1f before, %.0f B/client); broadcast to all: p50 %.0f ms, max %.0f ms; %.0f performs/s; %d dropped\n",
			res.Conns, res.ConnectS, res.SubscribePerS, float64(res.RSSIdle)/(1<<20), float64(res.RSSBefore)/(1<<20), res.RSSPerConn,
			res.BroadcastP50Ms, res.BroadcastMaxMs, res.PerformPerS, res.Dropped)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cablebench:", err)
		os.Exit(1)
	}
}

func run(url, identifier, broadcast, stats, pids string, n, c, sources, broadcasts, performs int, settle, wait time.Duration) (*result, error) {
	res := &result{Conns: n, RSSBefore: rss(pids)}
	var confirmed, dropped, pings atomic.Int64
	dialers := make([]websocket.Dialer, sources)
	for i := range dialers {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i+2))}}
		dialers[i] = websocket.Dialer{HandshakeTimeout: 60 * time.Second, NetDialContext: d.DialContext,
			Subprotocols: []string{"actioncable-v1-json", "actioncable-unsupported"}, ReadBufferSize: 1024, WriteBufferSize: 1024}
	}
	clients := make([]*client, n)
	var readers sync.WaitGroup
	defer func() {
		for _, cl := range clients {
			if cl != nil {
				cl.ws.Close()
			}
		}
		readers.Wait()
	}()
	start := time.Now()
	sem := make(chan struct{}, c)
	errs := make(chan error, n)
	var dials sync.WaitGroup
	for i := range clients {
		dials.Add(1)
		sem <- struct{}{}
		go func() {
			defer dials.Done()
			defer func() { <-sem }()
			var ws *websocket.Conn
			var err error
			for try := 0; try < 3; try++ { // a loaded machine refuses a few handshakes
				if ws, _, err = dialers[i%len(dialers)].Dial(url, nil); err == nil {
					break
				}
			}
			if err != nil {
				errs <- err
				return
			}
			if _, data, err := ws.ReadMessage(); err != nil || !bytes.Contains(data, []byte(`"welcome"`)) {
				errs <- fmt.Errorf("no welcome: %q %v", data, err)
				ws.Close()
				return
			}
			cl := &client{ws: ws, echo: make(chan struct{}, 1)}
			clients[i] = cl
			readers.Go(func() {
				for {
					_, data, err := ws.ReadMessage()
					if err != nil {
						if !strings.Contains(err.Error(), "use of closed") {
							dropped.Add(1)
						}
						return
					}
					switch {
					case bytes.Contains(data, pingTag):
						pings.Add(1)
					case bytes.Contains(data, seqTag):
						i := bytes.Index(data, seqTag) + len(seqTag)
						j := i
						for j < len(data) && data[j] >= '0' && data[j] <= '9' {
							j++
						}
						if k, err := strconv.ParseInt(string(data[i:j]), 10, 64); err == nil && k > cl.seq.Load() {
							cl.seq.Store(k)
						}
					case bytes.Contains(data, echoTag):
						cl.echo <- struct{}{}
					case bytes.Contains(data, confirmTag):
						confirmed.Add(1)
					}
				}
			})
		}()
	}
	dials.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	res.ConnectS = time.Since(start).Seconds()

	// Subscribe all at once.
	sub, _ := json.Marshal(map[string]string{"command": "subscribe", "identifier": identifier})
	t0 := time.Now()
	var writes sync.WaitGroup
	for part := range 16 {
		writes.Go(func() {
			for i := part; i < n; i += 16 {
				clients[i].ws.WriteMessage(websocket.TextMessage, sub)
			}
		})
	}
	writes.Wait()
	if !until(wait, func() bool { return confirmed.Load() >= int64(n) }) {
		return res, fmt.Errorf("%d of %d subscribes confirmed within %v", confirmed.Load(), n, wait)
	}
	res.SubscribePerS = float64(n) / time.Since(t0).Seconds()

	time.Sleep(settle)
	res.RSSIdle = rss(pids)
	res.RSSPerConn = float64(res.RSSIdle-res.RSSBefore) / float64(n)
	if stats != "" {
		if b, err := get(stats); err == nil {
			json.Unmarshal(b, &res.Stats)
		}
	}

	for k := 1; k <= broadcasts; k++ {
		t0 := time.Now()
		if _, err := get(broadcast + "&seq=" + strconv.Itoa(k)); err != nil {
			return res, fmt.Errorf("broadcast %d: %w", k, err)
		}
		// The clients' own receipt times are not kept: polling every
		// 200 µs bounds the error far below what is measured.
		if !until(wait, func() bool {
			for _, cl := range clients {
				if cl.seq.Load() < int64(k) {
					return false
				}
			}
			return true
		}) {
			return res, fmt.Errorf("broadcast %d did not reach every client within %v", k, wait)
		}
		res.BroadcastMs = append(res.BroadcastMs, float64(time.Since(t0).Microseconds())/1000)
		time.Sleep(500 * time.Millisecond)
	}
	sorted := slices.Clone(res.BroadcastMs)
	slices.Sort(sorted)
	res.BroadcastP50Ms, res.BroadcastMaxMs = sorted[len(sorted)/2], sorted[len(sorted)-1]

	if performs > 0 {
		data, _ := json.Marshal(map[string]any{"action": "echo", "e": 1})
		cmd, _ := json.Marshal(map[string]string{"command": "message", "identifier": identifier, "data": string(data)})
		var done atomic.Int64
		var failed atomic.Value
		t0 := time.Now()
		var all sync.WaitGroup
		for _, cl := range clients {
			all.Go(func() {
				for range performs {
					if err := cl.ws.WriteMessage(websocket.TextMessage, cmd); err != nil {
						failed.CompareAndSwap(nil, err)
						return
					}
					select {
					case <-cl.echo:
						done.Add(1)
					case <-time.After(wait):
						failed.CompareAndSwap(nil, fmt.Errorf("no echo within %v", wait))
						return
					}
				}
			})
		}
		all.Wait()
		res.Performs = int(done.Load())
		res.PerformPerS = float64(done.Load()) / time.Since(t0).Seconds()
		if err, _ := failed.Load().(error); err != nil {
			return res, fmt.Errorf("performs: %w", err)
		}
	}
	res.Dropped = dropped.Load()
	res.ProtocolPings = pings.Load()
	return res, nil
}

func until(wait time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return true
}

var web = &http.Client{Timeout: 30 * time.Second}

func get(url string) ([]byte, error) {
	resp, err := web.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %s %.200s", url, resp.Status, b)
	}
	return b, err
}

// rss sums VmRSS of the processes.
func rss(pids string) int64 {
	var total int64
	for _, p := range strings.Split(pids, ",") {
		if p == "" {
			continue
		}
		b, err := os.ReadFile("/proc/" + strings.TrimSpace(p) + "/status")
		if err != nil {
			fmt.Fprintln(os.Stderr, "cablebench:", err)
			os.Exit(1)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}
