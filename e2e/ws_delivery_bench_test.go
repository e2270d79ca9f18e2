package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cablecar/cablecar/actioncable"
)

// BenchmarkWSDelivery measures what a delivery costs the real binary (its
// CPU time, from /proc/<pid>/stat, per message read by a client) and how
// long broadcasts take to reach every subscriber, the last one included.
// The clients and the publisher are e2e/cmd/wsfanout, a process of their
// own, so that the server's CPU is its alone; wsfanout reports its own CPU
// too. Each cell gets a fresh Cablecar in front of Puma, with the in-memory
// broker; broadcasts go through the admin API.
//
//	go test -run - -bench WSDelivery -benchtime 1x -timeout 20m ./e2e/
//	BENCH_DELIVERY_CELLS=fanout10k go test -run - -bench WSDelivery -benchtime 1x ./e2e/
//
// Cells (issue 13): fanout10k, 20 broadcasts @100 ms to 10,000; burst1k,
// 1,000 @5 ms to 1,000; persec1k and persec10k, 10 @1 s to 1,000 and 10,000.
// Issue 14: each cell ending in -ac is the one before it with ActionCable
// clients (in front of testdata/acapp), each subscribed to one Turbo stream
// through the fast lane, all under one identifier; it reports subscribes
// per second too. idle5k and idle15k (and their -ac) are for the resident
// memory per connection, read from /proc by wsfanout, the same way in both
// modes (BENCH_CABLECAR_GOGC=10 runs Cablecar with that GOGC, to bring
// the figure nearer what stays live; BENCH_DELIVERY_IDLE=150s lets the
// connections sit idle that long before the "after idle" reading, past
// the runtime's forced collection every 2 minutes).
//
//	BENCH_DELIVERY_CELLS=fanout10k,fanout10k-ac go test -run - -bench WSDelivery -benchtime 1x ./e2e/
func BenchmarkWSDelivery(b *testing.B) {
	cells := []struct {
		name     string
		conns    int
		msgs     int
		interval string
		ac       bool
	}{
		{"fanout10k", 10000, 20, "100ms", false},
		{"fanout10k-ac", 10000, 20, "100ms", true},
		{"idle5k", 5000, 1, "100ms", false},
		{"idle5k-ac", 5000, 1, "100ms", true},
		{"idle15k", 15000, 1, "100ms", false},
		{"idle15k-ac", 15000, 1, "100ms", true},
		{"burst1k", 1000, 1000, "5ms", false},
		{"persec1k", 1000, 10, "1s", false},
		{"persec10k", 10000, 10, "1s", false},
	}
	only := os.Getenv("BENCH_DELIVERY_CELLS")
	tool := buildWSFanout(b)
	for _, cell := range cells {
		if only != "" && !strings.Contains(","+only+",", ","+cell.name+",") {
			continue
		}
		b.Run(cell.name, func(b *testing.B) {
			for b.Loop() {
				cfg := map[string]any{
					"log.level":              "warn",
					"websocket.send_queue":   cell.msgs + 10,
					"callback.max_in_flight": 64,
				}
				opts := PumaOptions{}
				path, args := "/ws/chat?subscribe=bench&events=close", []string{}
				if cell.ac {
					opts.Rackup = filepath.Join(RepoRoot(b), "testdata", "acapp", "config.ru")
					cfg["actioncable.turbo_streams_secret"] = acTurboSecret
					path = "/cable?events=close"
					args = append(args, "-actioncable", acID("Turbo::StreamsChannel", map[string]any{
						"signed_stream_name": actioncable.NewStreamVerifier(acTurboSecret).Sign("bench")}))
				}
				puma := StartPuma(b, opts)
				var env []string
				if v := os.Getenv("BENCH_CABLECAR_GOGC"); v != "" {
					// A low GOGC collects the garbage of the connects and
					// subscribes, so that memory per connection nears what
					// stays live.
					env = append(env, "GOGC="+v)
				}
				c := StartCablecar(b, CablecarOptions{Upstream: puma.Upstream, Config: cfg, Env: env})
				url := "ws" + c.URL[len("http"):] + path
				if v := os.Getenv("BENCH_DELIVERY_IDLE"); v != "" {
					// How long connections sit idle before the "after idle"
					// reading: past 2 minutes the runtime has forced a
					// collection and its scavenger returned what it frees.
					args = append(args, "-idle", v, "-wait", "120s")
				}
				cmd := exec.Command(tool, append([]string{"-url", url, "-admin", c.AdminURL, "-n", strconv.Itoa(cell.conns),
					"-msgs", strconv.Itoa(cell.msgs), "-interval", cell.interval, "-pid", strconv.Itoa(c.PID())}, args...)...)
				cmd.Stderr = os.Stderr
				out, err := cmd.Output()
				if err != nil {
					b.Fatalf("wsfanout: %v\n%s", err, out)
				}
				var r map[string]float64
				if err := json.Unmarshal(out, &r); err != nil {
					b.Fatalf("wsfanout said %q: %v", out, err)
				}
				b.ReportMetric(r["server_cpu_us_per_delivery"], "cablecar-cpu-us/delivery")
				b.ReportMetric(r["server_cpu_us_per_delivery_beyond_idle"], "cablecar-cpu-us/delivery-beyond-idle")
				b.ReportMetric(r["client_cpu_us_per_delivery"], "client-cpu-us/delivery")
				b.ReportMetric(r["p50_ms"], "p50-ms")
				b.ReportMetric(r["p99_ms"], "p99-ms")
				b.ReportMetric(r["max_ms"], "max-ms")
				b.ReportMetric(r["publish_late_p99_ms"], "publish-late-p99-ms")
				b.ReportMetric(r["server_rss_bytes_per_conn"], "cablecar-rss-bytes/conn")
				b.ReportMetric(r["server_rss_bytes_per_conn_after_idle"], "cablecar-rss-bytes/conn-after-idle")
				b.ReportMetric(r["server_idle_allocs_per_s"], "cablecar-allocs/s-idle")
				if v, ok := r["server_rss_bytes_per_conn_60s_before_end_of_idle"]; ok {
					b.ReportMetric(v, "cablecar-rss-bytes/conn-60s-before-end")
				}
				if cell.ac {
					b.ReportMetric(r["subscribe_per_s"], "subscribes/s")
					b.ReportMetric(r["server_cpu_us_per_subscribe"], "cablecar-cpu-us/subscribe")
				}
			}
		})
	}
}

// buildWSFanout builds e2e/cmd/wsfanout, without -race: it is the load, not
// what is measured.
func buildWSFanout(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "wsfanout")
	cmd := exec.Command("go", "build", "-o", bin, "./e2e/cmd/wsfanout")
	cmd.Dir = RepoRoot(b)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building wsfanout: %v\n%s", err, out)
	}
	return bin
}
