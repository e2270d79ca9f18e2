package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// BenchmarkWSConnections measures, on the real binary in front of Puma,
// what an idle WebSocket costs Cablecar (resident memory and goroutines,
// read from its own /metrics) and how long one broadcast takes to reach
// every subscriber (admin /publish → each client's read, p50/p99/max).
//
//	make bench-ws                                  # 5,000 connections
//	BENCH_WS_CONNS=10000 make bench-ws
//	BENCH_CHANNELS=10 make bench-ws                # 10 channels per accept (benchSubscribe)
//
// The client side runs in this process; it stays well under the machine's
// 20,000 open files per process.
func BenchmarkWSConnections(b *testing.B) {
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("BENCH_WS_CONNS")); err == nil && v > 0 && v <= 15000 {
		n = v
	}
	const publishes = 20
	puma := StartPuma(b, PumaOptions{})
	c := StartCablecar(b, CablecarOptions{Upstream: puma.Upstream, Config: map[string]any{
		"log.level":              "warn",
		"websocket.send_queue":   publishes * 2,
		"callback.max_in_flight": 64,
	}})
	for i := 0; i < b.N; i++ {
		runtime0 := c.Metric("process_resident_memory_bytes")
		goroutines0 := c.Metric("go_goroutines")

		var (
			mu        sync.Mutex
			latencies = make([]time.Duration, 0, n*publishes)
			received  atomic.Int64
			clients   = make([]*websocket.Conn, n)
			accepts   = make([]time.Duration, n)
			readers   sync.WaitGroup
		)
		dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
		url := "ws" + c.URL[len("http"):] + "/ws/chat?subscribe=" + benchSubscribe(b, "bench") + "&events=close"
		start := time.Now()
		var dials sync.WaitGroup
		errs := make(chan error, n)
		sem := make(chan struct{}, 32)
		for j := range clients {
			dials.Add(1)
			sem <- struct{}{}
			go func() {
				defer dials.Done()
				defer func() { <-sem }()
				began := time.Now()
				ws, _, err := dialer.Dial(strings.ReplaceAll(url, "{j}", strconv.Itoa(j)), http.Header{})
				if err != nil {
					errs <- err
					return
				}
				accepts[j] = time.Since(began)
				clients[j] = ws
				readers.Add(1)
				go func() {
					defer readers.Done()
					for {
						_, data, err := ws.ReadMessage()
						if err != nil {
							return
						}
						sent, err := strconv.ParseInt(string(bytes.TrimPrefix(data, []byte("t="))), 10, 64)
						if err != nil {
							continue
						}
						d := time.Since(time.Unix(0, sent))
						mu.Lock()
						latencies = append(latencies, d)
						mu.Unlock()
						received.Add(1)
					}
				}()
			}()
		}
		dials.Wait()
		close(errs)
		for err := range errs {
			b.Fatalf("dial: %v", err)
		}
		dialTime := time.Since(start)
		WaitFor(b, 30*time.Second, "every connection registered", func() bool {
			return c.Metric("cablecar_connections") == float64(n)
		})
		rss := c.Metric("process_resident_memory_bytes")
		goroutines := c.Metric("go_goroutines")

		for p := 0; p < publishes; p++ {
			body := fmt.Sprintf(`{"channel":"bench","data":"t=%d"}`, time.Now().UnixNano())
			resp, err := http.Post(c.AdminURL+"/publish", "application/json", bytes.NewBufferString(body))
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			want := int64((p + 1) * n)
			WaitFor(b, 30*time.Second, "a broadcast to reach everyone", func() bool { return received.Load() >= want })
		}
		slices.Sort(latencies)
		pct := func(q float64) float64 {
			return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
		}
		b.ReportMetric((rss-runtime0)/float64(n), "RSS-bytes/conn")
		b.ReportMetric((goroutines-goroutines0)/float64(n), "goroutines/conn")
		b.ReportMetric(float64(dialTime.Milliseconds())/1000, "s-to-connect-all")
		slices.Sort(accepts)
		b.ReportMetric(ms(accepts[n/2]), "accept-p50-ms")
		b.ReportMetric(ms(accepts[int(0.99*float64(n-1))]), "accept-p99-ms")
		b.ReportMetric(pct(0.5), "fanout-p50-ms")
		b.ReportMetric(pct(0.99), "fanout-p99-ms")
		b.ReportMetric(pct(1), "fanout-max-ms")
		b.Logf("%d connections: RSS %.1f → %.1f MiB, goroutines %.0f → %.0f; %d broadcasts to all: p50 %.2f ms, p99 %.2f ms, max %.2f ms",
			n, runtime0/(1<<20), rss/(1<<20), goroutines0, goroutines, publishes, pct(0.5), pct(0.99), pct(1))

		for _, ws := range clients {
			ws.Close()
		}
		readers.Wait()
		WaitFor(b, 60*time.Second, "every connection gone", func() bool {
			return c.Metric("cablecar_connections") == 0
		})
	}
}

// BenchmarkWSIdleMemory measures what an idle, subscribed, heartbeating
// WebSocket costs Cablecar in resident memory, held long enough to see
// whether that cost is flat. The clients run in a process of their own
// (e2e/cmd/wsload), so Cablecar's RSS and CPU are its own and the clients
// report their CPU apart.
//
//	BENCH_WS_CONNS=10000 BENCH_WS_SETTLE=180s BENCH_WS_PING=5s \
//	  go test -run - -bench WSIdleMemory -benchtime 1x -timeout 20m ./e2e/
//
// After every client is connected it samples Cablecar's /metrics every 5 s
// for the settle time, and reports RSS per connection (above the RSS before
// the first dial) at the start and at the end of the last 60 s, and the
// growth in between.
func BenchmarkWSIdleMemory(b *testing.B) {
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("BENCH_WS_CONNS")); err == nil && v > 0 && v <= 19000 {
		n = v
	}
	settle := benchDuration(b, "BENCH_WS_SETTLE", 180*time.Second)
	ping := benchDuration(b, "BENCH_WS_PING", 5*time.Second)
	const window = 60 * time.Second
	if settle < window {
		b.Fatalf("BENCH_WS_SETTLE=%v: at least %v, the window that must be flat", settle, window)
	}
	wsload := buildTool(b, "wsload")
	puma := StartPuma(b, PumaOptions{})
	c := StartCablecar(b, CablecarOptions{Upstream: puma.Upstream, Config: map[string]any{
		"log.level":               "warn",
		"callback.max_in_flight":  64,
		"websocket.ping_interval": ping.String(),
		"websocket.pong_timeout":  (2 * ping).String(),
	}})
	for i := 0; i < b.N; i++ {
		b.Logf("load before: %s", loadAvg())
		rss0 := c.Metric("process_resident_memory_bytes")
		goroutines0 := c.Metric("go_goroutines")
		url := "ws" + c.URL[len("http"):] + "/ws/chat?subscribe=" + benchSubscribe(b, "bench") + "&events=close"
		cmd := exec.Command(wsload, "-url", url, "-n", strconv.Itoa(n))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		lines := bufio.NewScanner(stdout)
		var connected struct {
			N       int     `json:"n"`
			Failed  int     `json:"failed"`
			Retried int     `json:"retried"`
			Seconds float64 `json:"seconds"`
			Error   string  `json:"first_error"`
		}
		readLine(b, lines, &connected)
		if connected.Failed > 0 {
			b.Fatalf("%d of %d dials failed, the first: %s", connected.Failed, n, connected.Error)
		}
		WaitFor(b, 60*time.Second, "every connection registered", func() bool {
			return c.Metric("cablecar_connections") == float64(n)
		})

		type sample struct {
			at                         time.Duration
			rss, heap, stack, gor, cpu float64
		}
		take := func(at time.Duration) sample {
			m := c.Metrics()
			v := func(name string) float64 { x, _ := MetricValue(m, name); return x }
			return sample{at, v("process_resident_memory_bytes"), v("go_memstats_heap_inuse_bytes"),
				v("go_memstats_stack_inuse_bytes"), v("go_goroutines"), v("process_cpu_seconds_total")}
		}
		held := time.Now()
		var samples []sample
		for {
			at := time.Since(held)
			samples = append(samples, take(at))
			if at >= settle {
				break
			}
			time.Sleep(min(5*time.Second, settle-at))
		}
		last := samples[len(samples)-1]
		first := samples[0]
		from := first
		for _, s := range samples {
			if s.at <= last.at-window {
				from = s
			}
		}
		perConn := func(v float64) float64 { return v / float64(n) / 1024 }
		for _, s := range samples {
			b.Logf("t=%3.0fs RSS %.1f KiB/conn (heap in use %.1f, stacks %.1f), goroutines %.0f, CPU %.2f s",
				s.at.Seconds(), perConn(s.rss-rss0), perConn(s.heap), perConn(s.stack), s.gor, s.cpu-first.cpu)
		}
		stdin.Close()
		var done struct {
			Pings    int64   `json:"pings"`
			Closed   int64   `json:"closed_by_server"`
			User     float64 `json:"cpu_user_seconds"`
			System   float64 `json:"cpu_system_seconds"`
			MaxRSSKB int64   `json:"max_rss_kib"`
		}
		readLine(b, lines, &done)
		cmd.Wait()
		if done.Closed > 0 {
			b.Errorf("the server closed %d idle connections", done.Closed)
		}
		b.ReportMetric(perConn(from.rss-rss0), "KiB/conn-window-start")
		b.ReportMetric(perConn(last.rss-rss0), "KiB/conn-end")
		b.ReportMetric((last.rss-from.rss)/(1<<20)/(last.at-from.at).Minutes(), "MiB/min-growth")
		b.ReportMetric(perConn(last.heap), "heap-KiB/conn")
		b.ReportMetric(perConn(last.stack), "stack-KiB/conn")
		b.ReportMetric((last.gor-goroutines0)/float64(n), "goroutines/conn")
		b.ReportMetric((last.cpu-first.cpu)/last.at.Seconds(), "server-CPU-s/s")
		b.ReportMetric((done.User + done.System), "client-CPU-s")
		b.Logf("%d connections held %v with pings every %v: RSS %.1f → %.1f MiB (%.1f before dialling); "+
			"%.2f KiB/conn at %v, %.2f KiB/conn at %v; client saw %d pings, used %.1f s CPU; load after: %s",
			n, settle, ping, from.rss/(1<<20), last.rss/(1<<20), rss0/(1<<20),
			perConn(from.rss-rss0), from.at.Round(time.Second), perConn(last.rss-rss0), last.at.Round(time.Second),
			done.Pings, done.User+done.System, loadAvg())
		WaitFor(b, 120*time.Second, "every connection gone", func() bool {
			return c.Metric("cablecar_connections") == 0
		})
	}
}

func benchDuration(b *testing.B, env string, def time.Duration) time.Duration {
	b.Helper()
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		b.Fatalf("%s=%q: want a duration such as 60s", env, v)
	}
	return d
}

// buildTool builds e2e/cmd/<name> into the test's temporary directory.
func buildTool(b *testing.B, name string) string {
	b.Helper()
	root, err := repoRoot()
	if err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(b.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", bin, "./e2e/cmd/"+name)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build ./e2e/cmd/%s: %v\n%s", name, err, out)
	}
	return bin
}

func readLine(b *testing.B, s *bufio.Scanner, v any) {
	b.Helper()
	if !s.Scan() {
		b.Fatalf("wsload ended without its report: %v", s.Err())
	}
	if err := json.Unmarshal(s.Bytes(), v); err != nil {
		b.Fatalf("wsload's report %q: %v", s.Text(), err)
	}
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	return strings.Join(f[:min(3, len(f))], " ")
}
