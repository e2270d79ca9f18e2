package pubsub_test

import (
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// The cost of history (SPEC §10): a publish through Redis with and
// without it, and the memory a channel's history takes.
//
//	go test -run '^$' -bench 'RedisPublishHistory' -benchtime 5000x ./pubsub/
//	go test -run '^$' -bench 'HistoryMemory' -benchtime 1x ./pubsub/
//
// Besides ns/op (the publisher's round trip) each Redis benchmark
// reports Redis's own CPU per publish (redis-us/op, from INFO
// commandstats) and the Redis commands it ran (cmds/op).

func BenchmarkRedisPublishHistory(b *testing.B) {
	s := startRedisServer(b)
	for _, size := range []int{0, 100} {
		b.Run("size="+strconv.Itoa(size), func(b *testing.B) {
			br := newHistoryBroker(b, s.URL(), pubsub.NewNodeID(), pubsub.HistoryConfig{Size: size, TTL: time.Minute})
			if err := br.Start(b.Context(), &recSink{}); err != nil {
				b.Fatal(err)
			}
			defer br.Close()
			payload := []byte(strings.Repeat("x", 100))
			ctx := b.Context()
			rdb := s.Client(b)
			rdb.ConfigResetStat(ctx)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if err := br.Publish(ctx, pubsub.Message{Channel: "bench:" + strconv.Itoa(i%100), Data: payload}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			calls, usec := commandStats(b, s.Client(b).Info(ctx, "commandstats").Val())
			b.ReportMetric(usec/float64(b.N), "redis-us/op")
			b.ReportMetric(float64(calls)/float64(b.N), "cmds/op")
		})
	}
}

// commandStats sums the calls over INFO commandstats (a script's own
// commands included: what Redis runs), and the usec of the commands a
// client sent (a script's time includes its commands'), leaving out the
// INFO, CONFIG and pings the benchmark and the broker ran.
func commandStats(b *testing.B, info string) (calls int64, usec float64) {
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || strings.Contains(name, "info") || strings.Contains(name, "config") ||
			strings.Contains(name, "ping") || strings.Contains(name, "client") || strings.Contains(name, "subscribe") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				n, _ := strconv.ParseInt(v, 10, 64)
				calls += n
			case "usec":
				if top := name == "cmdstat_publish" || name == "cmdstat_evalsha" || name == "cmdstat_eval"; top {
					f, _ := strconv.ParseFloat(v, 64)
					usec += f
				}
			}
		}
	}
	return calls, usec
}

// BenchmarkHistoryMemory reports the bytes a channel's full history takes:
// in the memory broker (Go heap) and in Redis (MEMORY USAGE of its stream
// and epoch), for 100 messages of 100 bytes.
func BenchmarkHistoryMemory(b *testing.B) {
	const channels, size, msgLen = 200, 100, 100
	payload := []byte(strings.Repeat("x", msgLen))
	b.Run("memory", func(b *testing.B) {
		for b.Loop() {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			m := pubsub.NewMemory().WithHistory(pubsub.HistoryConfig{Size: size, TTL: time.Hour})
			if err := m.Start(b.Context(), &recSink{}); err != nil {
				b.Fatal(err)
			}
			for c := range channels {
				for range size {
					if err := m.Publish(b.Context(), pubsub.Message{Channel: "c:" + strconv.Itoa(c), Data: payload}); err != nil {
						b.Fatal(err)
					}
				}
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/channels, "bytes/channel")
			runtime.KeepAlive(m)
			m.Close()
		}
	})
	b.Run("redis", func(b *testing.B) {
		s := startRedisServer(b)
		br := newHistoryBroker(b, s.URL(), pubsub.NewNodeID(), pubsub.HistoryConfig{Size: size, TTL: time.Hour})
		if err := br.Start(b.Context(), &recSink{}); err != nil {
			b.Fatal(err)
		}
		defer br.Close()
		rdb := s.Client(b)
		for b.Loop() {
			for i := range size {
				if err := br.Publish(b.Context(), pubsub.Message{Channel: "one", Data: payload}); err != nil {
					b.Fatal(err, i)
				}
			}
			stream := rdb.MemoryUsage(b.Context(), "cc:~h:{cc:one}").Val()
			meta := rdb.MemoryUsage(b.Context(), "cc:~hm:{cc:one}").Val()
			b.ReportMetric(float64(stream+meta), "bytes/channel")
		}
	})
}
