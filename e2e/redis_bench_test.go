package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/bits"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Broadcasts through Redis, on the real binary: two Cablecar nodes in front
// of one Puma, sharing one redis-server, with the clients split evenly over
// the nodes. The app's side of a broadcast is what an app does: a raw
// PUBLISH cablecar:<channel> from a Redis client of its own.
//
//	make bench-redis
//	BENCH_REDIS_CONNS=15000 make bench-redis      # fan-out to more clients
//
// Everything (clients, publisher, both nodes, Redis and Puma) shares the
// machine's cores; docs/performance.md says how to read the figures.

// benchMaxConns keeps the clients, which all live in this process, under
// its limit of 20,000 open files, with room for Redis and HTTP clients.
const benchMaxConns = 15000

// BenchmarkRedisFanout measures how long one PUBLISH takes to reach 10,000
// WebSocket clients on two nodes: 20 publishes, one at a time, each carrying
// the time it was sent (t=<unix nanos>); every client notes when it read it.
// It reports p50/p99/max over all receipts, and the CPU Redis and the nodes
// spent per delivered message.
func BenchmarkRedisFanout(b *testing.B) {
	n := benchConns(b, "BENCH_REDIS_CONNS", 10000)
	const publishes = 20
	rs := StartRedis(b)
	puma := StartPuma(b, PumaOptions{})
	nodes := startRedisNodes(b, rs, puma, 2, map[string]any{"websocket.send_queue": publishes * 2})
	rdb := benchRedisClient(b, rs)
	ctx := context.Background()
	const channel = "bench"

	for i := 0; i < b.N; i++ {
		var (
			mu        sync.Mutex
			latencies = make([]time.Duration, 0, n*publishes)
			received  atomic.Int64
		)
		rss0 := nodesMetric(b, nodes, "process_resident_memory_bytes")
		redisMem0 := redisMemory(b, rdb)
		fleet := dialFleet(b, nodes, n, "/ws/chat?subscribe="+benchSubscribe(b, channel)+"&events=close", func(data []byte, at time.Time) {
			sent, err := strconv.ParseInt(string(bytes.TrimPrefix(data, []byte("t="))), 10, 64)
			if err != nil {
				return
			}
			d := at.Sub(time.Unix(0, sent))
			mu.Lock()
			latencies = append(latencies, d)
			mu.Unlock()
			received.Add(1)
		})
		checkSubscribers(b, rdb, channel, len(nodes))
		rss := nodesMetric(b, nodes, "process_resident_memory_bytes")

		WaitFor(b, 30*time.Second, "every connection's record written to Redis", func() bool {
			var written float64
			for _, c := range nodes {
				v, _ := MetricValue(c.Metrics(), "cablecar_registry_writes_total", "outcome=ok")
				written += v
			}
			return written >= float64(n)
		})
		redisMem := redisMemory(b, rdb)
		meter := newCPUMeter(b, rdb, nodes)
		before := meter.sample()
		start := time.Now()
		for p := range publishes {
			got, err := rdb.Publish(ctx, "cablecar:"+channel, fmt.Sprintf("t=%d", time.Now().UnixNano())).Result()
			if err != nil {
				b.Fatalf("PUBLISH: %v", err)
			}
			if got != int64(len(nodes)) {
				b.Fatalf("PUBLISH reached %d subscribers in Redis, want %d (one per node)", got, len(nodes))
			}
			want := int64((p + 1) * n)
			WaitFor(b, 30*time.Second, "a broadcast to reach everyone", func() bool { return received.Load() >= want })
		}
		phase := time.Since(start)
		used := meter.since(before)
		if fleet.dropped.Load() > 0 {
			b.Fatalf("%d connections ended during the run", fleet.dropped.Load())
		}

		mu.Lock()
		slices.Sort(latencies)
		pct := func(q float64) float64 {
			return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
		}
		deliveries := float64(len(latencies))
		mu.Unlock()
		b.ReportMetric((rss-rss0)/float64(n), "RSS-bytes/conn")
		b.ReportMetric((redisMem-redisMem0)/float64(n), "redis-bytes/conn")
		b.ReportMetric(float64(fleet.dialTime.Milliseconds())/1000, "s-to-connect-all")
		b.ReportMetric(fleet.acceptMs(0.5), "accept-p50-ms")
		b.ReportMetric(fleet.acceptMs(0.99), "accept-p99-ms")
		b.ReportMetric(pct(0.5), "fanout-p50-ms")
		b.ReportMetric(pct(0.99), "fanout-p99-ms")
		b.ReportMetric(pct(1), "fanout-max-ms")
		b.ReportMetric(used.redis/publishes*1e6, "redis-cpu-us/publish")
		b.ReportMetric(used.redis/deliveries*1e6, "redis-cpu-us/delivery")
		b.ReportMetric(used.nodes/deliveries*1e6, "cablecar-cpu-us/delivery")
		b.Logf("nodes' resident memory: %.1f → %.1f MiB for %d connections; Redis used_memory %.1f → %.1f MiB (their records)",
			rss0/(1<<20), rss/(1<<20), n, redisMem0/(1<<20), redisMem/(1<<20))
		b.Logf("%d connections on %d nodes (connected in %.1f s); %d PUBLISH to all, %.0f deliveries in %.2f s: p50 %.2f ms, p99 %.2f ms, max %.2f ms",
			n, len(nodes), fleet.dialTime.Seconds(), publishes, deliveries, phase.Seconds(), pct(0.5), pct(0.99), pct(1))
		b.Logf("CPU over the publishes, beyond what the same time idle costs: %s; per delivery: Redis %.4f µs, nodes %.2f µs, clients %.2f µs; per PUBLISH: Redis %.1f µs",
			used, used.redis/deliveries*1e6, used.nodes/deliveries*1e6, used.self/deliveries*1e6, used.redis/publishes*1e6)

		fleet.close(b, nodes)
	}
}

// BenchmarkRedisPublishRate publishes to one channel at fixed rates, 3 s per
// rate, and reports the highest rate whose p99 delivery latency stays under
// 100 ms, for two audiences on two nodes:
//
//   - subscribers=1000 (BENCH_REDIS_RATE_CONNS): what one busy channel with
//     many clients can take, bounded by the fan-out to the clients;
//   - subscribers=2, one per node: what the path through Redis itself can
//     take (PUBLISH → Redis → the node's subscriber connection → a client),
//     with almost no fan-out.
//
// Each message carries the time it was due, not the time it was sent, so
// a publisher that falls behind is charged to the latency too. The rates
// step up until one misses the target, cannot be delivered within 15 s,
// or loses a client, so the run stays bounded however slow the machine.
func BenchmarkRedisPublishRate(b *testing.B) {
	rs := StartRedis(b)
	puma := StartPuma(b, PumaOptions{})
	// A send queue far above what any rate here can fill in 100 ms: an
	// overloaded step then shows as latency, not as clients closed as slow,
	// and the step after it is not measured on a thinned-out audience.
	nodes := startRedisNodes(b, rs, puma, 2, map[string]any{"websocket.send_queue": 100000})
	rdb := benchRedisClient(b, rs)
	audiences := []struct {
		n     int
		rates []int
	}{
		{benchConns(b, "BENCH_REDIS_RATE_CONNS", 1000), []int{25, 50, 75, 100, 150, 200, 300, 400, 600, 800}},
		{2, []int{500, 1000, 2000, 4000, 8000, 16000, 32000}},
	}
	for _, a := range audiences {
		b.Run(fmt.Sprintf("subscribers=%d", a.n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				publishRates(b, nodes, rdb, a.n, a.rates)
			}
		})
	}
}

// publishRates is one audience of BenchmarkRedisPublishRate.
func publishRates(b *testing.B, nodes []*Cablecar, rdb *goredis.Client, n int, rates []int) {
	const (
		stepFor = 3 * time.Second
		target  = 100 * time.Millisecond
		drainBy = 15 * time.Second
		channel = "rate"
	)
	ctx := context.Background()
	hists := make([]*latencyHist, len(rates))
	for s := range hists {
		hists[s] = &latencyHist{}
	}
	fleet := dialFleet(b, nodes, n, "/ws/chat?subscribe="+channel+"&events=close", func(data []byte, at time.Time) {
		step, due, ok := parseRateMessage(data)
		if ok && step < len(hists) {
			hists[step].record(at.Sub(time.Unix(0, due)))
		}
	})
	defer fleet.close(b, nodes)
	checkSubscribers(b, rdb, channel, len(nodes))
	meter := newCPUMeter(b, rdb, nodes)

	best, bestRedis, bestNodes := 0, 0.0, 0.0
	for s, rate := range rates {
		before := meter.sample()
		sent, lag, err := publishAtRate(ctx, rdb, "cablecar:"+channel, s, rate, stepFor)
		if err != nil {
			b.Fatalf("publishing at %d/s: %v", rate, err)
		}
		want := int64(sent) * int64(n)
		drained := poll(drainBy, func() bool { return hists[s].count() >= want })
		used := meter.since(before)
		h := hists[s]
		got := h.count()
		p50, p99, worst := h.quantile(0.5), h.quantile(0.99), h.max()
		redisPerPublish := used.redis / float64(max(sent, 1)) * 1e6
		nodesPerDelivery := used.nodes / float64(max(got, 1)) * 1e6
		b.ReportMetric(ms(p99), fmt.Sprintf("p99-ms@%d/s", rate))
		b.Logf("%5d msg/s to %d: %d published (publisher late by %.2f ms at p99), %d/%d delivered; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms; CPU beyond idle: %s = Redis %.2f µs/publish (%.4f µs/delivery), nodes %.2f µs/delivery, clients %.2f µs/delivery",
			rate, n, sent, ms(lag), got, want, ms(p50), ms(p99), ms(worst), used,
			redisPerPublish, used.redis/float64(max(got, 1))*1e6, nodesPerDelivery, used.self/float64(max(got, 1))*1e6)
		if dropped := fleet.dropped.Load(); dropped > 0 {
			b.Logf("%d clients were disconnected at %d msg/s; stopping here", dropped, rate)
			break
		}
		if !drained {
			b.Logf("%d msg/s: %d of %d deliveries missing %s after the last publish; stopping here", rate, want-got, want, drainBy)
			break
		}
		if p99 >= target {
			b.Logf("%d msg/s: p99 %.2f ms is over the %s target; stopping here", rate, ms(p99), target)
			break
		}
		best, bestRedis, bestNodes = rate, redisPerPublish, nodesPerDelivery
	}
	b.ReportMetric(float64(best), "max-msg/s-p99<100ms")
	b.ReportMetric(float64(best*n), "deliveries/s-at-max")
	b.ReportMetric(bestRedis, "redis-cpu-us/publish-at-max")
	b.ReportMetric(bestNodes, "cablecar-cpu-us/delivery-at-max")
	b.Logf("highest rate with p99 under %s: %d msg/s to %d subscribers (%d deliveries/s)", target, best, n, best*n)
}

// --- the parts ---------------------------------------------------------------

// benchSubscribe is the Cablecar-Subscribe list of a benchmark's clients:
// channel, shared by all, then BENCH_CHANNELS-1 (default 0) channels of the
// client's own, "{j}" standing for its number (dialFleet fills it in), as
// an app subscribing each connection to its user's channels does. Every
// channel of its own costs a node a subscription in the broker at accept.
//
//	BENCH_CHANNELS=10 make bench-redis
func benchSubscribe(b *testing.B, channel string) string {
	b.Helper()
	k := 1
	if v := os.Getenv("BENCH_CHANNELS"); v != "" {
		var err error
		if k, err = strconv.Atoi(v); err != nil || k < 1 || k > 100 {
			b.Fatalf("BENCH_CHANNELS=%q: want a number from 1 to 100", v)
		}
	}
	list := channel
	for i := 1; i < k; i++ {
		list += fmt.Sprintf(",%s-{j}-%d", channel, i)
	}
	return list
}

// benchConns reads a connection count from the environment variable env,
// or returns def.
func benchConns(b *testing.B, env string, def int) int {
	b.Helper()
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 2 || n > benchMaxConns {
		b.Fatalf("%s=%q: want a number from 2 to %d (the clients share this process's 20,000 open files)", env, v, benchMaxConns)
	}
	return n
}

// startRedisNodes starts count Cablecar nodes sharing one Redis, in front
// of one Puma.
func startRedisNodes(b *testing.B, rs *Redis, puma *Puma, count int, extra map[string]any) []*Cablecar {
	b.Helper()
	nodes := make([]*Cablecar, count)
	for k := range nodes {
		cfg := map[string]any{
			"log.level":              "warn",
			"broker.url":             rs.URL,
			"callback.max_in_flight": 64,
		}
		for key, v := range extra {
			cfg[key] = v
		}
		nodes[k] = StartCablecar(b, CablecarOptions{Upstream: puma.Upstream, Config: cfg})
	}
	for _, c := range nodes {
		WaitFor(b, 20*time.Second, "/readyz of "+c.Addr+" (Redis connected)", func() bool {
			return c.AdminStatus("/readyz") == 200
		})
	}
	return nodes
}

// benchRedisClient is the app's Redis client: what a Rails app does with
// redis-rb, done with go-redis.
func benchRedisClient(b *testing.B, rs *Redis) *goredis.Client {
	b.Helper()
	rdb := goredis.NewClient(&goredis.Options{
		Addr:                     rs.Addr,
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	b.Cleanup(func() { rdb.Close() })
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		b.Fatalf("PING %s: %v", rs.Addr, err)
	}
	return rdb
}

// checkSubscribers fails unless exactly nodes Redis subscriptions listen on
// the channel (each node subscribes once, however many of its clients do),
// and logs how many clients Redis has in pub/sub mode.
func checkSubscribers(b *testing.B, rdb *goredis.Client, channel string, nodes int) {
	b.Helper()
	ctx := context.Background()
	subs, err := rdb.PubSubNumSub(ctx, "cablecar:"+channel).Result()
	if err != nil {
		b.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	if got := subs["cablecar:"+channel]; got != int64(nodes) {
		b.Fatalf("PUBSUB NUMSUB cablecar:%s = %d, want %d (one subscription per node)", channel, got, nodes)
	}
	list, err := rdb.ClientList(ctx).Result()
	if err != nil {
		b.Fatalf("CLIENT LIST: %v", err)
	}
	var pubsubConns, all int
	for line := range strings.SplitSeq(strings.TrimSpace(list), "\n") {
		all++
		for field := range strings.FieldsSeq(line) {
			if flags, ok := strings.CutPrefix(field, "flags="); ok && strings.Contains(flags, "P") {
				pubsubConns++
			}
		}
	}
	b.Logf("Redis: %d client connections, %d of them in pub/sub mode, for %d nodes", all, pubsubConns, nodes)
}

// redisCPU is the CPU time redis-server has used so far, in seconds: user
// and system, from INFO cpu.
func redisCPU(b *testing.B, rdb *goredis.Client) float64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatalf("INFO cpu: %v", err)
	}
	var total float64
	var found int
	for line := range strings.SplitSeq(info, "\n") {
		key, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (key != "used_cpu_sys" && key != "used_cpu_user") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			b.Fatalf("INFO cpu: %s: %v", line, err)
		}
		total += v
		found++
	}
	if found != 2 {
		b.Fatalf("INFO cpu has no used_cpu_sys and used_cpu_user:\n%s", info)
	}
	return total
}

// redisMemory is Redis's used_memory, in bytes.
func redisMemory(b *testing.B, rdb *goredis.Client) float64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatalf("INFO memory: %v", err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("INFO memory: %s: %v", line, err)
			}
			return f
		}
	}
	b.Fatalf("INFO memory has no used_memory:\n%s", info)
	return 0
}

// nodesCPU is the CPU time the nodes have used so far, in seconds, from
// their process_cpu_seconds_total.
func nodesCPU(b *testing.B, nodes []*Cablecar) float64 {
	b.Helper()
	return nodesMetric(b, nodes, "process_cpu_seconds_total")
}

// nodesMetric is the sum of a metric over the nodes; it fails the
// benchmark if a node does not export it.
func nodesMetric(b *testing.B, nodes []*Cablecar, name string) float64 {
	b.Helper()
	var total float64
	for _, c := range nodes {
		v, ok := MetricValue(c.Metrics(), name)
		if !ok {
			b.Fatalf("%s has no metric %s", c.Addr, name)
		}
		total += v
	}
	return total
}

// selfCPU is the CPU time this process (the clients and the publisher) has
// used so far, in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// cpuMeter reads the CPU time used by Redis, by the nodes and by this
// process (the clients and the publisher), and charges a measured phase only
// with what it used beyond the same time idle: Redis's housekeeping, the
// nodes' heartbeats and lease refreshes, and the metrics scrapes that take
// the readings cost CPU with no message moving.
type cpuMeter struct {
	b     *testing.B
	rdb   *goredis.Client
	nodes []*Cablecar
	idle  cpuUse // per second, with every client connected and nothing published
}

type cpuSample struct {
	at                 time.Time
	redis, nodes, self float64 // seconds of CPU so far
}

// cpuUse is CPU seconds used over wall.
type cpuUse struct {
	wall               time.Duration
	redis, nodes, self float64
}

func (u cpuUse) String() string {
	return fmt.Sprintf("Redis %.1f ms, nodes %.0f ms, clients %.0f ms in %.2f s", u.redis*1e3, u.nodes*1e3, u.self*1e3, u.wall.Seconds())
}

// newCPUMeter measures the idle cost for 2 s.
func newCPUMeter(b *testing.B, rdb *goredis.Client, nodes []*Cablecar) *cpuMeter {
	b.Helper()
	m := &cpuMeter{b: b, rdb: rdb, nodes: nodes}
	first := m.sample()
	time.Sleep(2 * time.Second) // the measurement itself, not a settling pause
	idle := m.raw(first, m.sample())
	secs := idle.wall.Seconds()
	m.idle = cpuUse{wall: time.Second, redis: idle.redis / secs, nodes: idle.nodes / secs, self: idle.self / secs}
	b.Logf("idle, per second: Redis %.2f ms, nodes %.2f ms, clients %.2f ms of CPU", m.idle.redis*1e3, m.idle.nodes*1e3, m.idle.self*1e3)
	return m
}

func (m *cpuMeter) sample() cpuSample {
	m.b.Helper()
	return cpuSample{at: time.Now(), redis: redisCPU(m.b, m.rdb), nodes: nodesCPU(m.b, m.nodes), self: selfCPU()}
}

func (m *cpuMeter) raw(from, to cpuSample) cpuUse {
	return cpuUse{wall: to.at.Sub(from.at), redis: to.redis - from.redis, nodes: to.nodes - from.nodes, self: to.self - from.self}
}

// since is the CPU used from before until now, less the idle cost of as
// long.
func (m *cpuMeter) since(before cpuSample) cpuUse {
	m.b.Helper()
	u := m.raw(before, m.sample())
	secs := u.wall.Seconds()
	u.redis -= m.idle.redis * secs
	u.nodes -= m.idle.nodes * secs
	u.self -= m.idle.self * secs
	return u
}

// benchFleet is many WebSocket clients spread round-robin over the nodes,
// each with a goroutine that reads until its connection ends.
type benchFleet struct {
	clients []*websocket.Conn
	readers sync.WaitGroup
	closing atomic.Bool
	dropped atomic.Int64 // connections that ended before close
	retried atomic.Int64 // handshakes that had to be tried again
	// firstRefusal says why the first retried handshake failed; written
	// once, by the dial that made retried 1, read after every dial ended.
	firstRefusal string
	dialTime     time.Duration
	// accepts is how long each successful handshake took, sorted.
	accepts []time.Duration
}

// acceptMs is the q-quantile of the handshakes' durations, in ms.
func (f *benchFleet) acceptMs(q float64) float64 {
	if len(f.accepts) == 0 {
		return 0
	}
	return ms(f.accepts[int(q*float64(len(f.accepts)-1))])
}

// dialFleet opens n connections to path, client j on node j%len(nodes), 32
// handshakes at a time, and waits until every node counts its share. A
// "{j}" in path becomes the client's number (see benchSubscribe). Every
// data message is handed to onMessage with the time it was read, from the
// client's reading goroutine.
func dialFleet(b *testing.B, nodes []*Cablecar, n int, path string, onMessage func(data []byte, at time.Time)) *benchFleet {
	b.Helper()
	f := &benchFleet{clients: make([]*websocket.Conn, n), accepts: make([]time.Duration, 0, n)}
	var acceptsMu sync.Mutex
	dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	start := time.Now()
	var dials sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for j := range f.clients {
		dials.Add(1)
		sem <- struct{}{}
		go func() {
			defer dials.Done()
			defer func() { <-sem }()
			url := wsURL(nodes[j%len(nodes)].URL) + strings.ReplaceAll(path, "{j}", strconv.Itoa(j))
			// A refused handshake is tried again, twice: on a shared
			// machine Puma can stall past callback.timeout, and the
			// fan-out, not the accept, is measured here.
			var ws *websocket.Conn
			for attempt := 0; ; attempt++ {
				began := time.Now()
				conn, resp, err := dialer.Dial(url, http.Header{})
				if err == nil {
					took := time.Since(began)
					acceptsMu.Lock()
					f.accepts = append(f.accepts, took)
					acceptsMu.Unlock()
					ws = conn
					break
				}
				if attempt == 2 {
					errs <- fmt.Errorf("%s: %w%s", url, err, describeResponse(resp))
					return
				}
				if f.retried.Add(1) == 1 {
					f.firstRefusal = fmt.Sprintf("%v%s", err, describeResponse(resp))
				}
				time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
			}
			f.clients[j] = ws
			f.readers.Add(1)
			go func() {
				defer f.readers.Done()
				for {
					_, data, err := ws.ReadMessage()
					if err != nil {
						if !f.closing.Load() {
							f.dropped.Add(1)
						}
						return
					}
					onMessage(data, time.Now())
				}
			}()
		}()
	}
	dials.Wait()
	close(errs)
	for err := range errs {
		f.close(b, nodes)
		b.Fatalf("dial: %v", err)
	}
	f.dialTime = time.Since(start)
	slices.Sort(f.accepts)
	if r := f.retried.Load(); r > 0 {
		b.Logf("%d of %d handshakes were refused at first and tried again; the first: %s", r, n, f.firstRefusal)
	}
	for k, c := range nodes {
		share := float64(n / len(nodes))
		if k < n%len(nodes) {
			share++
		}
		WaitFor(b, 30*time.Second, "every connection registered on "+c.Addr, func() bool {
			return c.Metric("cablecar_connections") == share
		})
	}
	return f
}

// close closes every client and waits until the nodes have let go of them
// (and so have sent the app their close events).
func (f *benchFleet) close(b *testing.B, nodes []*Cablecar) {
	b.Helper()
	f.closing.Store(true)
	for _, ws := range f.clients {
		if ws != nil {
			ws.Close()
		}
	}
	f.readers.Wait()
	for _, c := range nodes {
		WaitFor(b, 60*time.Second, "every connection gone from "+c.Addr, func() bool {
			return c.Metric("cablecar_connections") == 0
		})
	}
}

// publishAtRate PUBLISHes rate messages a second to channel for d, on a
// fixed schedule whatever Redis or the nodes do: message k is due at
// start + k/rate and carries that time and the step, "t=<unix nanos>;s=<step>".
// Messages that fall due together (the pacer wakes about once a
// millisecond) go in one pipeline. It returns how many it sent and the p99
// of how late they went out.
func publishAtRate(ctx context.Context, rdb *goredis.Client, channel string, step, rate int, d time.Duration) (int, time.Duration, error) {
	total := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lags := make([]time.Duration, 0, total)
	start := time.Now()
	sent := 0
	for sent < total {
		now := time.Now()
		due := min(total, int(now.Sub(start)/interval)+1)
		if due <= sent {
			time.Sleep(start.Add(time.Duration(sent) * interval).Sub(now))
			continue
		}
		pipe := rdb.Pipeline()
		for k := sent; k < due; k++ {
			at := start.Add(time.Duration(k) * interval)
			pipe.Publish(ctx, channel, "t="+strconv.FormatInt(at.UnixNano(), 10)+";s="+strconv.Itoa(step))
			lags = append(lags, now.Sub(at))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return sent, 0, err
		}
		sent = due
	}
	slices.Sort(lags)
	return sent, lags[int(0.99*float64(len(lags)-1))], nil
}

// parseRateMessage reads "t=<unix nanos>;s=<step>".
func parseRateMessage(data []byte) (step int, due int64, ok bool) {
	t, s, found := bytes.Cut(bytes.TrimPrefix(data, []byte("t=")), []byte(";s="))
	if !found {
		return 0, 0, false
	}
	due, err := strconv.ParseInt(string(t), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	step, err = strconv.Atoi(string(s))
	if err != nil || step < 0 {
		return 0, 0, false
	}
	return step, due, true
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// latencyHist counts latencies in buckets 1/64 of a power of two wide
// (values read back within 1.6 %), safe for the many readers that record
// at once; too many receipts to keep each one.
type latencyHist struct {
	counts [histBuckets]atomic.Int64
	n      atomic.Int64
	top    atomic.Int64
}

const (
	histSub     = 64
	histBuckets = 42 * histSub // up to 2^42 ns, over an hour
)

func histIndex(ns int64) int {
	if ns < histSub {
		return int(max(ns, 0))
	}
	shift := bits.Len64(uint64(ns)) - 7 // ns>>shift is in [64, 128)
	i := (shift+1)*histSub + int(ns>>shift) - histSub
	return min(i, histBuckets-1)
}

// histUpper is the largest value bucket i holds.
func histUpper(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	shift := i/histSub - 1
	return (int64(histSub+i%histSub+1) << shift) - 1
}

func (h *latencyHist) record(d time.Duration) {
	ns := int64(d)
	h.counts[histIndex(ns)].Add(1)
	h.n.Add(1)
	for {
		top := h.top.Load()
		if ns <= top || h.top.CompareAndSwap(top, ns) {
			return
		}
	}
}

func (h *latencyHist) count() int64       { return h.n.Load() }
func (h *latencyHist) max() time.Duration { return time.Duration(h.top.Load()) }

// quantile is the latency at or under which a fraction q of the receipts
// fall, read as the upper edge of its bucket.
func (h *latencyHist) quantile(q float64) time.Duration {
	var total int64
	for i := range h.counts {
		total += h.counts[i].Load()
	}
	if total == 0 {
		return 0
	}
	rank := max(int64(q*float64(total)+0.5), 1)
	var seen int64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return time.Duration(min(histUpper(i), h.top.Load()))
		}
	}
	return h.max()
}

func TestLatencyHist(t *testing.T) {
	for _, ns := range []int64{0, 1, 63, 64, 65, 127, 128, 1000, 999_999, 1_000_000, 123_456_789, 1 << 41} {
		i := histIndex(ns)
		if upper := histUpper(i); upper < ns || (i > 0 && histUpper(i-1) >= ns) {
			t.Errorf("%d ns went to bucket %d, which ends at %d (the one before at %d)", ns, i, upper, histUpper(i-1))
		}
		if ns >= histSub && float64(histUpper(i)-ns) > float64(ns)/histSub {
			t.Errorf("%d ns reads back as %d: more than 1/%d off", ns, histUpper(i), histSub)
		}
	}
	var h latencyHist
	for v := 1; v <= 1000; v++ {
		h.record(time.Duration(v) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, time.Millisecond}} {
		got := h.quantile(c.q)
		if got < c.want || got > c.want+c.want/histSub {
			t.Errorf("quantile(%v) = %v, want %v (+1/%d)", c.q, got, c.want, histSub)
		}
	}
	if h.count() != 1000 || h.max() != time.Millisecond {
		t.Errorf("count %d, max %v; want 1000, 1ms", h.count(), h.max())
	}
}
