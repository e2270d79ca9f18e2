package pubsub_test

import (
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/pubsub/pubsubtest"
)

func newHistoryBroker(t testing.TB, url, node string, h pubsub.HistoryConfig) *pubsub.Redis {
	t.Helper()
	b, err := pubsub.NewRedis(pubsub.RedisConfig{URL: url, Prefix: "cc:", Node: node, History: h}, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRedisHistoryContract(t *testing.T) {
	s := startRedisServer(t)
	pubsubtest.RunHistory(t, func(t *testing.T, node string, h pubsub.HistoryConfig) pubsub.Broker {
		return newHistoryBroker(t, s.URL(), node, h)
	})
	// With every channel recorded, the broker still keeps the whole
	// contract: recorded messages travel through the script instead.
	pubsubtest.Run(t, func(t *testing.T, node string) pubsub.Broker {
		return newHistoryBroker(t, s.URL(), node, pubsub.HistoryConfig{Size: 10, TTL: time.Minute})
	})
}

func TestRedisClusterHistoryContract(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node Redis Cluster")
	}
	cluster := startRedisCluster(t)
	pubsubtest.RunHistory(t, func(t *testing.T, node string, h pubsub.HistoryConfig) pubsub.Broker {
		return newHistoryBroker(t, cluster.URL(), node, h)
	})
}

// startedHistory is a started Redis broker recording every channel, and
// what it delivers.
func startedHistory(t *testing.T, url string) (*pubsub.Redis, *recSink) {
	t.Helper()
	b := newHistoryBroker(t, url, pubsub.NewNodeID(), pubsub.HistoryConfig{Size: 100, TTL: time.Minute})
	sink := &recSink{here: map[string]bool{}}
	if err := b.Start(t.Context(), sink); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b, sink
}

// A flush loses the history: the next message starts a new epoch, and a
// position taken before it no longer resumes.
func TestRedisHistoryFlushNewEpoch(t *testing.T) {
	s := startRedisServer(t)
	b, _ := startedHistory(t, s.URL())
	h := pubsub.HistoryOf(b)
	ctx := t.Context()
	before := []pubsub.Message{{Channel: "room", Data: []byte("a")}, {Channel: "room", Data: []byte("b")}}
	if err := b.Publish(ctx, before...); err != nil {
		t.Fatal(err)
	}
	if err := s.Client(t).FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	after := []pubsub.Message{{Channel: "room", Data: []byte("c")}}
	if err := b.Publish(ctx, after...); err != nil {
		t.Fatal(err)
	}
	if after[0].Epoch == before[0].Epoch || after[0].Offset != 1 {
		t.Fatalf("after FLUSHALL the message is at %v, before it at %v: want a new epoch from offset 1",
			pubsub.PositionOf(&after[0]), pubsub.PositionOf(&before[1]))
	}
	r, err := h.After(ctx, "room", pubsub.PositionOf(&before[0]))
	if err != nil || r.Complete {
		t.Errorf("After a position of the lost epoch: complete=%v, %v; want incomplete", r.Complete, err)
	}
}

// A Redis that lost its scripts (a restart, SCRIPT FLUSH) is given the
// script's text again; nothing is published twice.
func TestRedisHistoryScriptReloaded(t *testing.T) {
	s := startRedisServer(t)
	b, sink := startedHistory(t, s.URL())
	ctx := t.Context()
	if err := b.Subscribe(ctx, "room"); err != nil {
		t.Fatal(err)
	}
	for i, script := range []bool{false, true, false} {
		if script {
			if err := s.Client(t).ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		m := []pubsub.Message{{Channel: "room", Data: []byte("x")}, {Channel: "other", Data: []byte("y")}}
		if err := b.Publish(ctx, m...); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if m[0].Offset != uint64(i+1) || m[1].Offset != uint64(i+1) {
			t.Fatalf("publish %d: offsets %d and %d, want %d", i, m[0].Offset, m[1].Offset, i+1)
		}
	}
	testsupport.Eventually(t, "3 deliveries", 10*time.Second, func() bool { return len(sink.messages()) >= 3 })
	if err := b.Publish(ctx, pubsub.Message{Channel: "room", Data: []byte("end")}); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, "4 deliveries", 10*time.Second, func() bool { return len(sink.messages()) >= 4 })
	for i, m := range sink.messages() {
		if m.Offset != uint64(i+1) {
			t.Errorf("delivery %d at offset %d: a message went out twice or not at all", i, m.Offset)
		}
	}
}

// The gem runs the same script: its copy must be this one, byte for byte.
func TestHistoryScriptSameAsGem(t *testing.T) {
	ours, err := os.ReadFile("history.lua")
	if err != nil {
		t.Fatal(err)
	}
	gems, err := os.ReadFile("../ruby/lib/cablecar/publish.lua")
	if err != nil {
		t.Fatal(err)
	}
	if string(ours) != string(gems) {
		t.Error("pubsub/history.lua and ruby/lib/cablecar/publish.lua differ: change both (cp pubsub/history.lua ruby/lib/cablecar/publish.lua)")
	}
}
