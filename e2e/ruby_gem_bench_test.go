package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// BenchmarkGemEcho measures what the gem costs end to end: clients send a
// message and wait for its echo, through Cablecar, Puma and either the gem
// (testdata/gemapp, signature checked, handler rebuilt per event) or a
// hand-written Rack echo that parses the events and answers the JSON
// itself, with no signature check. Same Puma (8:32 threads), same 2 cores,
// clients in this process.
//
//	make bench-ruby
func BenchmarkGemEcho(b *testing.B) {
	const (
		clients  = 32
		messages = 300 // per client, one in flight each
	)
	root := RepoRoot(b)
	raw := filepath.Join(b.TempDir(), "config.ru")
	if err := os.WriteFile(raw, []byte(rawEchoApp), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, app := range []struct{ name, rackup, path string }{
		{"rack", raw, "/ws/echo"},
		{"gem", filepath.Join(root, "testdata", "gemapp", "config.ru"), "/ws/echo?room=bench"},
	} {
		b.Run(app.name, func(b *testing.B) {
			const secret = "bench-secret"
			port := FreePort(b)
			c := StartCablecar(b, CablecarOptions{
				Upstream: "http://127.0.0.1:" + strconv.Itoa(port),
				Config: map[string]any{"callback.secret": secret, "log.level": "warn",
					// Each client sends as fast as its echoes come back.
					"websocket.rate_limit.per_second": 100000, "websocket.rate_limit.burst": 100000},
			})
			StartPuma(b, PumaOptions{Port: port, Rackup: app.rackup, Env: map[string]string{
				"RUBYLIB": filepath.Join(root, "ruby", "lib"), "CABLECAR_CALLBACK_SECRET": secret,
			}})
			for i := 0; i < b.N; i++ {
				conns := make([]*WSClient, clients)
				for j := range conns {
					conns[j], _ = MustDialWS(b, c.URL+app.path, nil)
					if app.name == "gem" {
						if _, _, err := conns[j].Read(gemWait); err != nil { // the "open …" greeting
							b.Fatal(err)
						}
					}
				}
				var (
					mu   sync.Mutex
					rtts = make([]time.Duration, 0, clients*messages)
					wg   sync.WaitGroup
					errs = make(chan error, clients)
				)
				start := time.Now()
				for j, ws := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						mine := make([]time.Duration, 0, messages)
						for k := 0; k < messages; k++ {
							want := fmt.Sprintf("m-%d-%d", j, k)
							t0 := time.Now()
							if err := ws.TrySend(1, []byte("echo:"+want)); err != nil {
								errs <- err
								return
							}
							_, data, err := ws.Read(gemWait)
							if err != nil || string(data) != want {
								errs <- fmt.Errorf("client %d message %d: %q %v", j, k, data, err)
								return
							}
							mine = append(mine, time.Since(t0))
						}
						mu.Lock()
						rtts = append(rtts, mine...)
						mu.Unlock()
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
				slices.Sort(rtts)
				pct := func(q float64) float64 { return ms(rtts[int(q*float64(len(rtts)-1))]) }
				rate := float64(len(rtts)) / elapsed.Seconds()
				b.ReportMetric(rate, "msgs/s")
				b.ReportMetric(pct(0.5), "rtt-p50-ms")
				b.ReportMetric(pct(0.99), "rtt-p99-ms")
				b.Logf("%s: %d clients × %d round trips in %v: %.0f msg/s, rtt p50 %.2f ms, p99 %.2f ms",
					app.name, clients, messages, elapsed.Round(time.Millisecond), rate, pct(0.5), pct(0.99))
				for _, ws := range conns {
					ws.CloseWith(gemWait, 1000, "")
				}
			}
		})
	}
}

// rawEchoApp answers Cablecar by hand: accept everything, echo "echo:X"
// as X. The least a Rack app can do per event.
const rawEchoApp = `
require "json"
run lambda { |env|
  if env["HTTP_CABLECAR_UPGRADE"]
    next [200, {"cablecar-accept" => "websocket", "cablecar-events" => "message"}, []]
  end
  next [200, {}, ["rack echo\n"]] unless env["REQUEST_METHOD"] == "POST"
  batch = JSON.parse(env["rack.input"].read)
  out = batch["events"].filter_map { |e| e["data"].delete_prefix("echo:") if e["type"] == "message" }
  next [204, {}, []] if out.empty?
  [200, {"content-type" => "application/json"}, [JSON.generate(send: out)]]
}
`
