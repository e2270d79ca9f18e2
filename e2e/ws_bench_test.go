package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
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
