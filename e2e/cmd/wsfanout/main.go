//go:build linux

// Command wsfanout measures broadcast delivery on a running Cablecar from a
// process of its own: it opens -n WebSockets to -url, publishes -msgs
// broadcasts through the admin API (-admin), one every -interval, and
// records when each client reads each one.
//
// Message k is due at start + k·interval and carries that time, so a
// publisher that falls behind is charged to the latency ("coordinated
// omission" avoided). Latencies are over every delivery, the last one
// included; percentiles are exact.
//
// With -pid, it reads that process's CPU time (utime+stime in
// /proc/<pid>/stat) before the first publish and once every message has
// reached every client, and reports it per delivery; the same reading over
// -idle before publishing (heartbeats, with every client connected) gives
// the idle cost, which is also reported subtracted. Its own CPU (the
// clients' and the publisher's) is reported separately.
//
// With -actioncable I, the clients speak ActionCable (SPEC §9): each dials
// offering actioncable-v1-json as @rails/actioncable does and reads its
// welcome; once every client is connected, all of them send a subscribe
// for identifier I at once (a Turbo page's stream, confirmed by Cablecar's
// fast lane), and the rate of confirmations and the server's CPU per
// subscribe are reported; broadcasts then arrive as
// {"identifier":I,"message":"t=…"}.
//
// With -pid, the server's resident memory (VmRSS) is read before the
// first dial and once every client is connected (and subscribed), and
// reported per connection.
//
// One JSON line goes to stdout, one line for people to stderr.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
)

// Bounds that keep a mistyped flag from becoming an unbounded run: this
// machine allows 20,000 open files per process.
const (
	maxConns = 19000
	maxMsgs  = 100000
)

type result struct {
	Conns            int     `json:"conns"`
	Msgs             int     `json:"msgs"`
	IntervalMs       float64 `json:"interval_ms"`
	Delivered        int64   `json:"delivered"`
	Expected         int64   `json:"expected"`
	ConnectS         float64 `json:"connect_s"`
	P50Ms            float64 `json:"p50_ms"`
	P99Ms            float64 `json:"p99_ms"`
	MaxMs            float64 `json:"max_ms"`
	PublishLateP99Ms float64 `json:"publish_late_p99_ms"`
	PhaseS           float64 `json:"phase_s"`
	ServerCPUS       float64 `json:"server_cpu_s,omitempty"`
	ServerIdleCPUS   float64 `json:"server_idle_cpu_s_per_s,omitempty"`
	ServerUsPerDel   float64 `json:"server_cpu_us_per_delivery,omitempty"`
	ServerUsPerDelX  float64 `json:"server_cpu_us_per_delivery_beyond_idle,omitempty"`
	ClientCPUS       float64 `json:"client_cpu_s"`
	ClientUsPerDel   float64 `json:"client_cpu_us_per_delivery"`
	Dropped          int64   `json:"clients_dropped"`
	RSSPerConn       float64 `json:"server_rss_bytes_per_conn,omitempty"`
	RSSPerConnIdle   float64 `json:"server_rss_bytes_per_conn_after_idle,omitempty"`
	RSSPerConnIdle60 float64 `json:"server_rss_bytes_per_conn_60s_before_end_of_idle,omitempty"`
	IdleAllocsPerS   float64 `json:"server_idle_allocs_per_s,omitempty"`
	StackPerConn     float64 `json:"server_stack_bytes_per_conn,omitempty"`
	HeapPerConn      float64 `json:"server_heap_inuse_bytes_per_conn,omitempty"`
	SubscribePerS    float64 `json:"subscribe_per_s,omitempty"`
	ServerUsPerSub   float64 `json:"server_cpu_us_per_subscribe,omitempty"`
}

func main() {
	url := flag.String("url", "", "WebSocket URL to open, e.g. ws://127.0.0.1:3000/ws/chat?subscribe=bench")
	admin := flag.String("admin", "", "Cablecar's admin URL, e.g. http://127.0.0.1:9394")
	channel := flag.String("channel", "bench", "channel to publish to")
	n := flag.Int("n", 1000, "connections")
	msgs := flag.Int("msgs", 20, "broadcasts")
	interval := flag.Duration("interval", 100*time.Millisecond, "time between broadcasts")
	pid := flag.Int("pid", 0, "Cablecar's process id, for its CPU time (0: not measured)")
	idle := flag.Duration("idle", 2*time.Second, "how long the idle CPU is measured before publishing")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for the last deliveries")
	flag.StringVar(&acIdentifier, "actioncable", "", "speak ActionCable and subscribe with this identifier (JSON text)")
	flag.StringVar(&peer, "peer", "", "measure a peer instead of Cablecar: anycable (ActionCable, a $pubsub public stream) or centrifugo (its JSON protocol)")
	flag.StringVar(&publishTo, "publish", "", "publish through redis://host:port (Cablecar: PUBLISH <prefix><channel>; anycable: its legacy Redis broadcast) or, for centrifugo, its http API URL; default: Cablecar's admin API")
	flag.Parse()
	if err := setPeer(); err != nil {
		fmt.Fprintln(os.Stderr, "wsfanout:", err)
		os.Exit(2)
	}
	if *admin == "" && peer != "" {
		*admin = "-" // peers have no Cablecar admin API
	}
	if *url == "" || *admin == "" || *n < 1 || *n > maxConns || *msgs < 1 || *msgs > maxMsgs || *interval < 0 {
		fmt.Fprintf(os.Stderr, "wsfanout: -url and -admin are required; 1 ≤ -n ≤ %d, 1 ≤ -msgs ≤ %d\n", maxConns, maxMsgs)
		os.Exit(2)
	}
	res, err := run(*url, *admin, *channel, *n, *msgs, *interval, *pid, *idle, *wait)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsfanout:", err)
		os.Exit(1)
	}
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	fmt.Fprintf(os.Stderr, "wsfanout: %d msgs @%v to %d: %d/%d delivered; p50 %.1f ms, p99 %.1f ms, max %.1f ms; server %.2f µs/delivery (%.2f beyond idle), clients %.2f µs/delivery; server RSS %.0f B/conn (%.0f after idle; stacks %.0f, heap in use %.0f)\n",
		res.Msgs, *interval, res.Conns, res.Delivered, res.Expected, res.P50Ms, res.P99Ms, res.MaxMs,
		res.ServerUsPerDel, res.ServerUsPerDelX, res.ClientUsPerDel, res.RSSPerConn, res.RSSPerConnIdle, res.StackPerConn, res.HeapPerConn)
	if acIdentifier != "" {
		fmt.Fprintf(os.Stderr, "wsfanout: %.0f subscribes/s, server %.1f µs/subscribe\n", res.SubscribePerS, res.ServerUsPerSub)
	}
}

// acIdentifier is -actioncable: "" for plain WebSockets.
var acIdentifier string

var (
	acMessage = []byte(`"message":"t=`)
	acConfirm = []byte(`"type":"confirm_subscription"`)
)

// due is the time a broadcast carries, from a plain frame (t=…) or an
// ActionCable one ({"identifier":I,"message":"t=…"}).
func due(data []byte) (int64, bool) {
	if peer == "centrifugo" {
		i := bytes.Index(data, cfData)
		if i < 0 {
			return 0, false
		}
		data = data[i+len(cfData):]
		if j := bytes.IndexByte(data, '"'); j >= 0 {
			data = data[:j]
		}
	} else if acIdentifier != "" {
		i := bytes.Index(data, acMessage)
		if i < 0 {
			return 0, false
		}
		data = data[i+len(acMessage):]
		if j := bytes.IndexByte(data, '"'); j >= 0 {
			data = data[:j]
		}
	} else {
		data = bytes.TrimPrefix(data, []byte("t="))
	}
	t, err := strconv.ParseInt(string(data), 10, 64)
	return t, err == nil
}

func run(url, admin, channel string, n, msgs int, interval time.Duration, pid int, idle, wait time.Duration) (*result, error) {
	lat := make([]int64, n*msgs) // nanoseconds, in order of receipt
	var got, dropped, confirmed atomic.Int64
	rss0, stack0, heap0 := 0.0, 0.0, 0.0
	if pid != 0 {
		rss0 = procRSS(pid)
		stack0, heap0 = metric(admin, "go_memstats_stack_inuse_bytes"), metric(admin, "go_memstats_heap_inuse_bytes")
	}
	pub, err := newPublisher(admin, channel)
	if err != nil {
		return nil, err
	}
	defer pub.close()
	clients := make([]*websocket.Conn, n)
	var readers sync.WaitGroup
	dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	if acIdentifier != "" {
		dialer.Subprotocols = []string{"actioncable-v1-json", "actioncable-unsupported"}
	}
	start := time.Now()
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
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
				if ws, _, err = dialer.Dial(url, nil); err == nil {
					break
				}
			}
			if err != nil {
				errs <- err
				return
			}
			if peer == "centrifugo" {
				if err := centrifugoConnect(ws); err != nil {
					errs <- err
					ws.Close()
					return
				}
			} else if acIdentifier != "" {
				// The welcome first: the connection is then accepted.
				if _, data, err := ws.ReadMessage(); err != nil || !bytes.Contains(data, []byte(`"welcome"`)) {
					errs <- fmt.Errorf("no welcome: %q %v", data, err)
					ws.Close()
					return
				}
			}
			clients[i] = ws
			readers.Go(func() {
				for {
					_, data, err := ws.ReadMessage()
					now := time.Now().UnixNano()
					if err != nil {
						if !strings.Contains(err.Error(), "use of closed") {
							dropped.Add(1)
						}
						return
					}
					due, ok := due(data)
					if !ok {
						switch {
						case peer == "centrifugo" && isCentrifugoPing(data):
							ws.WriteMessage(websocket.TextMessage, data) // its pong is the same {}
						case peer == "centrifugo" && bytes.Contains(data, cfSubscribed):
							confirmed.Add(1)
						case acIdentifier != "" && bytes.Contains(data, acConfirm):
							confirmed.Add(1)
						}
						continue
					}
					if k := got.Add(1) - 1; k < int64(len(lat)) {
						lat[k] = now - due
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
	res := &result{Conns: n, Msgs: msgs, IntervalMs: float64(interval) / 1e6, Expected: int64(n * msgs),
		ConnectS: time.Since(start).Seconds()}
	defer func() {
		for _, ws := range clients {
			ws.Close()
		}
		readers.Wait()
	}()

	if acIdentifier != "" || peer == "centrifugo" {
		// Every client subscribes at once; the phase ends with the last
		// confirmation.
		cmd, _ := json.Marshal(map[string]string{"command": "subscribe", "identifier": acIdentifier})
		if peer == "centrifugo" {
			cmd = centrifugoSubscribe(channel)
		}
		cpu0, t0 := 0.0, time.Now()
		if pid != 0 {
			cpu0 = procCPU(pid)
		}
		var subs sync.WaitGroup
		for part := range 32 {
			subs.Go(func() {
				for i := part; i < n; i += 32 {
					clients[i].WriteMessage(websocket.TextMessage, cmd)
				}
			})
		}
		subs.Wait()
		deadline := time.Now().Add(wait)
		for confirmed.Load() < int64(n) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if c := confirmed.Load(); c < int64(n) {
			return nil, fmt.Errorf("%d of %d subscribes confirmed within %v", c, n, wait)
		}
		took := time.Since(t0).Seconds()
		res.SubscribePerS = float64(n) / took
		if pid != 0 {
			res.ServerUsPerSub = (procCPU(pid) - cpu0) / float64(n) * 1e6
		}
	}
	var idleRate float64
	if pid != 0 {
		// Let the accepts' work settle, then take the idle cost.
		time.Sleep(time.Second)
		res.RSSPerConn = (procRSS(pid) - rss0) / float64(n)
		res.StackPerConn = (metric(admin, "go_memstats_stack_inuse_bytes") - stack0) / float64(n)
		res.HeapPerConn = (metric(admin, "go_memstats_heap_inuse_bytes") - heap0) / float64(n)
		c0, t0 := procCPU(pid), time.Now()
		m0 := metric(admin, "go_memstats_mallocs_total")
		if idle >= 2*time.Minute {
			// A reading 60 s before the end says whether RSS is flat by then.
			time.Sleep(idle - time.Minute)
			res.RSSPerConnIdle60 = (procRSS(pid) - rss0) / float64(n)
			time.Sleep(time.Until(t0.Add(idle)))
		} else {
			time.Sleep(idle)
		}
		idleRate = (procCPU(pid) - c0) / time.Since(t0).Seconds()
		res.IdleAllocsPerS = (metric(admin, "go_memstats_mallocs_total") - m0) / time.Since(t0).Seconds()
		res.RSSPerConnIdle = (procRSS(pid) - rss0) / float64(n)
		res.ServerIdleCPUS = idleRate
	}
	self0 := selfCPU()
	server0 := 0.0
	if pid != 0 {
		server0 = procCPU(pid)
	}
	phase := time.Now()
	late := make([]time.Duration, 0, msgs)
	client := &http.Client{Timeout: 10 * time.Second}
	for k := range msgs {
		due := phase.Add(time.Duration(k) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		late = append(late, time.Since(due))
		if err := pub.publish(client, "t="+strconv.FormatInt(due.UnixNano(), 10)); err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
	}
	deadline := time.Now().Add(wait)
	for got.Load() < res.Expected && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(phase).Seconds()
	res.PhaseS = elapsed
	res.Delivered = got.Load()
	res.Dropped = dropped.Load()
	res.ClientCPUS = selfCPU() - self0
	del := float64(max(res.Delivered, 1))
	res.ClientUsPerDel = res.ClientCPUS / del * 1e6
	if pid != 0 {
		res.ServerCPUS = procCPU(pid) - server0
		res.ServerUsPerDel = res.ServerCPUS / del * 1e6
		res.ServerUsPerDelX = (res.ServerCPUS - idleRate*elapsed) / del * 1e6
	}
	l := lat[:min(res.Delivered, int64(len(lat)))]
	slices.Sort(l)
	if len(l) > 0 {
		q := func(p float64) float64 { return float64(l[int(p*float64(len(l)-1))]) / 1e6 }
		res.P50Ms, res.P99Ms, res.MaxMs = q(0.5), q(0.99), q(1)
	}
	slices.Sort(late)
	res.PublishLateP99Ms = float64(late[int(0.99*float64(len(late)-1))]) / 1e6
	if res.Delivered < res.Expected {
		return res, fmt.Errorf("%d of %d deliveries arrived within %v after the last publish", res.Delivered, res.Expected, wait)
	}
	return res, nil
}

// procCPU is a process's CPU time so far, user and system, in seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsfanout:", err)
		os.Exit(1)
	}
	// The command name is in parentheses and may hold spaces: the fields
	// are counted after its closing one (utime is field 14, stime 15).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ, 100 on Linux
}

// metric is one unlabelled value from the server's /metrics, 0 if absent.
func metric(admin, name string) float64 {
	if peer != "" {
		return 0
	}
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	for line := range strings.Lines(b.String()) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// procRSS is a process's resident memory, in bytes (VmRSS).
func procRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsfanout:", err)
		os.Exit(1)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
