package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkWebhookThroughput measures events per second from 1,000 clients
// to a fast Go upstream (e2e/cmd/webhookload -serve), and the real binary's
// CPU per event. The clients are webhookload too, a process of their own.
//
//	go test -run - -bench WebhookThroughput -benchtime 1x -timeout 10m ./e2e/
//
// paced1k: each client sends its next message once the reply to the last
// came back, so every request carries one event (no batching). burst1k:
// each client sends all its messages at once, so events queue behind the
// one in flight and go together (batching, SPEC §3). The rate limit is off
// and callback.max_in_flight is the default (256). BENCH_CABLECAR_GOGC
// runs Cablecar with that GOGC.
func BenchmarkWebhookThroughput(b *testing.B) {
	cells := []struct {
		name  string
		mode  string
		conns int
		msgs  int
	}{
		{"paced1k", "paced", 1000, 40},
		{"burst1k", "burst", 1000, 200},
	}
	only := os.Getenv("BENCH_WEBHOOK_CELLS")
	tool := filepath.Join(b.TempDir(), "webhookload")
	build := exec.Command("go", "build", "-o", tool, "./e2e/cmd/webhookload")
	build.Dir = RepoRoot(b)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building webhookload: %v\n%s", err, out)
	}
	for _, cell := range cells {
		if only != "" && !strings.Contains(","+only+",", ","+cell.name+",") {
			continue
		}
		b.Run(cell.name, func(b *testing.B) {
			for b.Loop() {
				appAddr := fmt.Sprintf("127.0.0.1:%d", FreePort(b))
				args := []string{"-serve", appAddr}
				if cell.mode == "burst" {
					// The clients do not read in a burst: replies would fill
					// their send queues.
					args = append(args, "-quiet")
				}
				app := startProcess(b, "webhookload-app", exec.Command(tool, args...))
				b.Cleanup(func() { app.stop(syscall.SIGTERM, 5*time.Second) })
				WaitFor(b, 10*time.Second, "the upstream to listen", func() bool {
					code, _, err := get(http.DefaultClient, "http://"+appAddr+"/stats", time.Second)
					return err == nil && code == 200
				})
				var env []string
				if v := os.Getenv("BENCH_CABLECAR_GOGC"); v != "" {
					env = append(env, "GOGC="+v) // Cablecar's own is 50 (main.go)
				}
				c := StartCablecar(b, CablecarOptions{Upstream: "http://" + appAddr, Env: env, Config: map[string]any{
					"log.level":                       "warn",
					"websocket.rate_limit.per_second": 0,
					"websocket.send_queue":            cell.msgs + 10,
					"callback.retries":                0,
				}})
				cmd := exec.Command(tool, "-url", "ws"+c.URL[len("http"):]+"/ws", "-stats", "http://"+appAddr,
					"-n", strconv.Itoa(cell.conns), "-msgs", strconv.Itoa(cell.msgs), "-mode", cell.mode,
					"-pid", strconv.Itoa(c.PID()), "-app-pid", strconv.Itoa(app.pid()))
				cmd.Stderr = os.Stderr
				out, err := cmd.Output()
				if err != nil {
					b.Fatalf("webhookload: %v\n%s", err, out)
				}
				var r struct {
					EventsPerS    float64 `json:"events_per_s"`
					EventsPerReq  float64 `json:"events_per_request"`
					ServerUsPerEv float64 `json:"server_cpu_us_per_event"`
					AppCPUS       float64 `json:"app_cpu_s"`
					ClientCPUS    float64 `json:"client_cpu_s"`
				}
				if err := json.Unmarshal(out, &r); err != nil {
					b.Fatalf("webhookload said %q: %v", out, err)
				}
				b.ReportMetric(r.EventsPerS, "events/s")
				b.ReportMetric(r.EventsPerReq, "events/request")
				b.ReportMetric(r.ServerUsPerEv, "cablecar-cpu-us/event")
				b.ReportMetric(r.AppCPUS, "app-cpu-s")
				b.ReportMetric(r.ClientCPUS, "client-cpu-s")
			}
		})
	}
}
