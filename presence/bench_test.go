package presence

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// Benchmarks of presence through a real Redis, two nodes (two trackers and
// stores, as two Cablecar processes have) on one redis-server:
//
//	go test -run '^$' -bench 'Presence' -benchtime 1x ./presence/
//
// (docs/performance.md, "Presence", has the figures.)

// benchNode is a node without the lease loop: benchmarks do not reap.
func benchNode(b *testing.B, rdb redis.UniversalClient, name string, outbox bool, notify func(Event)) *Tracker {
	b.Helper()
	store := NewRedis(rdb, RedisConfig{Prefix: "b:", Node: name, LeaseTTL: time.Minute, Outbox: outbox}, zerolog.Nop())
	tr := NewTracker(Config{Notify: notify}, store, zerolog.Nop())
	go tr.Run()
	b.Cleanup(func() { tr.Close(); tr.Wait() })
	return tr
}

func syncedB(b *testing.B, trs ...*Tracker) {
	b.Helper()
	for _, tr := range trs {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := tr.Synced(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
}

// BenchmarkPresenceRedisJoinLeave: joins and leaves of distinct ids in one
// channel, half on each node, as fast as the nodes take them; reports
// joins+leaves per second decided through Redis.
func BenchmarkPresenceRedisJoinLeave(b *testing.B) {
	rdb := testsupport.StartRedis(b).Client(b)
	var events sync.WaitGroup
	notify := func(Event) { events.Done() }
	nodes := []*Tracker{benchNode(b, rdb, "n1", false, notify), benchNode(b, rdb, "n2", false, notify)}
	const batch = 10000
	info := json.RawMessage(`{"name":"device"}`)
	b.ResetTimer()
	start := time.Now()
	ops := 0
	for round := 0; round < b.N; round++ {
		events.Add(2 * batch)
		for i := range batch {
			nodes[i%2].Join("c"+strconv.Itoa(i), "room", "d"+strconv.Itoa(i), info)
		}
		// A leave before its join was written coalesces with it: nothing.
		syncedB(b, nodes...)
		for i := range batch {
			nodes[i%2].Leave("c"+strconv.Itoa(i), "room")
		}
		events.Wait()
		ops += 2 * batch
	}
	syncedB(b, nodes...)
	b.ReportMetric(float64(ops)/time.Since(start).Seconds(), "joins+leaves/s")
}

// BenchmarkPresenceRedisMemory: Redis's used_memory per present id, 10k
// ids with a small info, held by one node each.
func BenchmarkPresenceRedisMemory(b *testing.B) {
	rdb := testsupport.StartRedis(b).Client(b)
	nodes := []*Tracker{benchNode(b, rdb, "n1", false, nil), benchNode(b, rdb, "n2", false, nil)}
	const n = 10000
	before := usedMemory(b, rdb)
	for i := range n {
		nodes[i%2].Join("c"+strconv.Itoa(i), "devices", "device-"+strconv.Itoa(i), json.RawMessage(`{"name":"Kitchen sensor","fw":"1.4.2"}`))
	}
	syncedB(b, nodes...)
	after := usedMemory(b, rdb)
	b.ReportMetric(float64(after-before)/n, "B/entry")
}

func usedMemory(b *testing.B, rdb redis.UniversalClient) int64 {
	b.Helper()
	s, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(s, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no used_memory in INFO memory")
	return 0
}

// BenchmarkPresenceLeaveCallback: with 10k devices present in one channel
// (half on each node), the time from a device's last connection going
// (leave_delay 0: add yours) to the app's presence callback receiving its
// leave, over HTTP, one device at a time; p50 and p99.
func BenchmarkPresenceLeaveCallback(b *testing.B) {
	rdb := testsupport.StartRedis(b).Client(b)
	type got struct {
		id string
		at time.Time
	}
	arrived := make(chan got, 1024)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var v struct {
			Events []Event `json:"events"`
		}
		_ = json.Unmarshal(body, &v)
		now := time.Now()
		for _, ev := range v.Events {
			if ev.Type == Leave {
				arrived <- got{ev.Who, now}
			}
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(app.Close)
	post := func(ctx context.Context, body []byte) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, app.URL, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		res.Body.Close()
		return res.StatusCode, nil
	}
	var nodes []*Tracker
	for _, name := range []string{"n1", "n2"} {
		store := NewRedis(rdb, RedisConfig{Prefix: "b:", Node: name, LeaseTTL: time.Minute, Outbox: true}, zerolog.Nop())
		p := NewPoster(post, store, zerolog.Nop())
		go p.Run()
		b.Cleanup(p.Close)
		tr := NewTracker(Config{Notify: func(ev Event) { p.Add(ev) }}, store, zerolog.Nop())
		go tr.Run()
		b.Cleanup(func() { tr.Close(); tr.Wait() })
		nodes = append(nodes, tr)
	}
	const present = 10000
	for i := range present {
		nodes[i%2].Join("c"+strconv.Itoa(i), "devices", "device-"+strconv.Itoa(i), json.RawMessage(`{"name":"sensor"}`))
	}
	syncedB(b, nodes...)
	samples := max(b.N, 200)
	lat := make([]time.Duration, 0, samples)
	b.ResetTimer()
	for k := range samples {
		i := k % present
		start := time.Now()
		nodes[i%2].Drop("c" + strconv.Itoa(i))
		for g := range arrived {
			if g.id == "device-"+strconv.Itoa(i) {
				lat = append(lat, g.at.Sub(start))
				break
			}
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.5), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(float64(present), "present")
}
