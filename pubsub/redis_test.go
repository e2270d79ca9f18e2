package pubsub_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/pubsub/pubsubtest"
	"github.com/cablecar/cablecar/registry"
)

// The launcher is testsupport's: startRedisServer and startRedisCluster
// keep the names these tests use.
var (
	startRedisServer  = testsupport.StartRedis
	startRedisCluster = testsupport.StartCluster
)

func newRedisBroker(t testing.TB, url, node string) *pubsub.Redis {
	t.Helper()
	b, err := pubsub.NewRedis(pubsub.RedisConfig{URL: url, Prefix: "cc:", Node: node}, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRedisContract(t *testing.T) {
	s := startRedisServer(t)
	pubsubtest.Run(t, func(t *testing.T, node string) pubsub.Broker {
		return newRedisBroker(t, s.URL(), node)
	})
}

func TestRedisClusterContract(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node Redis Cluster")
	}
	cluster := startRedisCluster(t)
	pubsubtest.Run(t, func(t *testing.T, node string) pubsub.Broker {
		return newRedisBroker(t, cluster.URL(), node)
	}, pubsubtest.Sharded)
}

// sink records deliveries for the Redis-specific tests.
type recSink struct {
	mu   sync.Mutex
	msgs []pubsub.Message
	cmds []pubsub.Command
	here map[string]bool
}

func (s *recSink) Deliver(m pubsub.Message) {
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
}

func (s *recSink) Execute(c pubsub.Command) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmds = append(s.cmds, c)
	return s.here[c.Connection]
}

func (s *recSink) messages() []pubsub.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]pubsub.Message(nil), s.msgs...)
}

func (s *recSink) commands() []pubsub.Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]pubsub.Command(nil), s.cmds...)
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testsupport.Eventually(t, what, 15*time.Second, cond)
}

func startBroker(t testing.TB, url, node string) (*pubsub.Redis, *recSink) {
	b := newRedisBroker(t, url, node)
	s := &recSink{here: map[string]bool{}}
	if err := b.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, s
}

// An app's PUBLISH reaches subscribers verbatim, and the channels a node
// holds in Redis are exactly those it was subscribed to: once however often
// (the hub counts subscribers, not the broker), until one Unsubscribe.
func TestRedisVerbatimAndSubscriptions(t *testing.T) {
	s := startRedisServer(t)
	url := "redis://" + s.Addr
	b, got := startBroker(t, url, pubsub.NewNodeID())
	ctx := context.Background()
	app := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer app.Close()

	for i := 0; i < 2; i++ {
		if err := b.Subscribe(ctx, "room:1"); err != nil {
			t.Fatal(err)
		}
	}
	chans := func() []string {
		c, _ := app.PubSubChannels(ctx, "cc:room*").Result()
		return c
	}
	if c := chans(); len(c) != 1 || c[0] != "cc:room:1" {
		t.Fatalf("PUBSUB CHANNELS = %v, want [cc:room:1]", c)
	}
	payload := "héllo \x00 wörld " + strings.Repeat("x", 64<<10)
	if err := app.Publish(ctx, "cc:room:1", payload).Err(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the verbatim message", func() bool { return len(got.messages()) == 1 })
	if m := got.messages()[0]; m.Channel != "room:1" || string(m.Data) != payload || m.Binary || m.Except != "" {
		t.Fatalf("got %q %d bytes binary=%v except=%q", m.Channel, len(m.Data), m.Binary, m.Except)
	}

	if err := b.Unsubscribe(ctx, "room:1"); err != nil {
		t.Fatal(err)
	}
	// Unsubscribe returns once Redis confirmed it.
	if c := chans(); len(c) != 0 {
		t.Fatalf("after Unsubscribe PUBSUB CHANNELS = %v", c)
	}
}

// Commands for a connection on another node travel over Redis; one for a
// node that is gone is ErrNoConnection.
func TestRedisDirectAcrossNodes(t *testing.T) {
	s := startRedisServer(t)
	url := "redis://" + s.Addr
	nodeA, nodeB := pubsub.NewNodeID(), pubsub.NewNodeID()
	a, _ := startBroker(t, url, nodeA)
	_, sinkB := startBroker(t, url, nodeB)
	onB := pubsub.NewConnectionID(nodeB)
	sinkB.mu.Lock()
	sinkB.here[onB] = true
	sinkB.mu.Unlock()

	ctx := context.Background()
	cmds := []pubsub.Command{
		{Kind: pubsub.CommandSend, Connection: onB, Data: []byte{0, 1, 0xff}, Binary: true},
		{Kind: pubsub.CommandClose, Connection: onB, Code: 4002, Reason: "bye ✓"},
	}
	for _, c := range cmds {
		if err := a.Direct(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "both commands on node B", func() bool { return len(sinkB.commands()) == 2 })
	for i, c := range sinkB.commands() {
		w := cmds[i]
		if c.Kind != w.Kind || c.Connection != w.Connection || string(c.Data) != string(w.Data) || c.Binary != w.Binary || c.Code != w.Code || c.Reason != w.Reason {
			t.Errorf("command %d = %+v, want %+v", i, c, w)
		}
	}
	lost := pubsub.NewConnectionID(pubsub.NewNodeID())
	if err := a.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: lost, Data: []byte("x")}); err != pubsub.ErrNoConnection {
		t.Fatalf("Direct to a node nobody runs: %v, want ErrNoConnection", err)
	}
	if err := a.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: "not-an-id", Data: []byte("x")}); err != pubsub.ErrNoConnection {
		t.Fatalf("Direct to a malformed id: %v, want ErrNoConnection", err)
	}
}

// After Redis restarts (empty), the broker reconnects, resubscribes on its
// own, and is ready again; meanwhile it says why it is not.
func TestRedisRestart(t *testing.T) {
	s := startRedisServer(t)
	b, got := startBroker(t, "redis://"+s.Addr, pubsub.NewNodeID())
	ctx := context.Background()
	if err := b.Subscribe(ctx, "news"); err != nil {
		t.Fatal(err)
	}
	if err := b.Ready(ctx); err != nil {
		t.Fatalf("Ready before the outage: %v", err)
	}
	if d := b.DownSince(); !d.IsZero() {
		t.Fatalf("DownSince before the outage = %v, want zero", d)
	}
	killed := time.Now()
	s.Kill()
	waitUntil(t, "Ready to report the outage", func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return b.Ready(rctx) != nil
	})
	waitUntil(t, "DownSince to tell the outage", func() bool { return !b.DownSince().IsZero() })
	if d := b.DownSince(); d.Before(killed) || d.After(time.Now()) {
		t.Errorf("DownSince = %v, want between the kill (%v) and now", d, killed)
	}
	if err := b.Publish(ctx, pubsub.Message{Channel: "news", Data: []byte("lost")}); err == nil {
		t.Error("Publish during the outage reported success")
	}
	s.Start()
	waitUntil(t, "Ready after the restart", func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return b.Ready(rctx) == nil
	})
	if d := b.DownSince(); !d.IsZero() {
		t.Errorf("DownSince after the restart = %v, want zero", d)
	}
	app := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer app.Close()
	waitUntil(t, "a broadcast after the restart", func() bool {
		app.Publish(ctx, "cc:news", "back").Err()
		for _, m := range got.messages() {
			if string(m.Data) == "back" {
				return true
			}
		}
		return false
	})
}

// The envelope is what carries binary and except; it must never appear on
// the verbatim channel an app listens to.
func TestRedisEnvelopeStaysOffAppChannels(t *testing.T) {
	s := startRedisServer(t)
	b, _ := startBroker(t, "redis://"+s.Addr, pubsub.NewNodeID())
	ctx := context.Background()
	app := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer app.Close()
	ps := app.Subscribe(ctx, "cc:room")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx, pubsub.Message{Channel: "room", Data: []byte{1, 2}, Binary: true},
		pubsub.Message{Channel: "room", Data: []byte("x"), Except: "c_someone"},
		pubsub.Message{Channel: "room", Data: []byte("plain")})
	msg, err := ps.ReceiveTimeout(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := msg.(*redis.Message); !ok || m.Payload != "plain" {
		t.Fatalf("an app subscribed to cc:room got %v first, want only the plain text message", msg)
	}
}

func TestNewRedisClientURLs(t *testing.T) {
	for _, u := range []string{
		"redis://127.0.0.1:6379/0", "rediss://user:pw@127.0.0.1:6380/2",
		"redis+sentinel://127.0.0.1:26379?master_name=mymaster&addr=127.0.0.1:26380",
		"redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001", "rediss+cluster://127.0.0.1:7000",
	} {
		c, _, err := pubsub.NewRedisClient(u)
		if err != nil {
			t.Errorf("%s: %v", u, err)
			continue
		}
		c.Close()
	}
	for _, u := range []string{"http://x", "redis+sentinel://127.0.0.1:26379", "redis://127.0.0.1:6379?bogus=1"} {
		if c, _, err := pubsub.NewRedisClient(u); err == nil {
			c.Close()
			t.Errorf("%s: accepted", u)
		}
	}
}

// Each role's connections carry CLIENT SETNAME cablecar:<node>:<role>, so
// that an operator reading CLIENT LIST can tell whose they are and what
// they are for.
func TestRedisClientNames(t *testing.T) {
	s := startRedisServer(t)
	node := pubsub.NewNodeID()
	b, _ := startBroker(t, "redis://"+s.Addr, node)
	ctx := context.Background()
	if err := b.Subscribe(ctx, "room:names"); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, pubsub.Message{Channel: "room:names", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	reg := registry.New(b.Client(), registry.Config{Prefix: "cc:", Node: node}, zerolog.Nop(), prometheus.NewRegistry())
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		reg.Run(rctx, nil)
	}()
	t.Cleanup(func() { stop(); <-done })

	admin := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer admin.Close()
	want := []string{"cablecar:" + node + ":publish", "cablecar:" + node + ":pubsub", "cablecar:" + node + ":registry"}
	var list string
	waitUntil(t, "every role's connection in CLIENT LIST", func() bool {
		list, _ = admin.ClientList(ctx).Result()
		for _, w := range want {
			if !strings.Contains(list, " name="+w+" ") {
				return false
			}
		}
		return true
	})
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if strings.Contains(line, "cmd=client|list") {
			continue // ours
		}
		if !strings.Contains(line, " name=cablecar:"+node+":") {
			t.Errorf("a connection without a Cablecar name: %s", line)
		}
	}
}

// A client_name in the URL is kept as the names' base.
func TestRedisClientNameFromURL(t *testing.T) {
	s := startRedisServer(t)
	node := pubsub.NewNodeID()
	b, _ := startBroker(t, "redis://"+s.Addr+"?client_name=shop", node)
	if err := b.Publish(context.Background(), pubsub.Message{Channel: "x", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer admin.Close()
	waitUntil(t, "shop:<node>:publish in CLIENT LIST", func() bool {
		list, _ := admin.ClientList(context.Background()).Result()
		return strings.Contains(list, " name=shop:"+node+":publish ")
	})
}

// An accept with ten channels costs the node one SUBSCRIBE in Redis, not
// ten, and leaving them one UNSUBSCRIBE.
func TestRedisBatchIsOneCommand(t *testing.T) {
	s := startRedisServer(t)
	b, _ := startBroker(t, "redis://"+s.Addr, pubsub.NewNodeID())
	ctx := context.Background()
	app := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer app.Close()
	calls := func(cmd string) int {
		info, err := app.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\n") {
			if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
				n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
				return n
			}
		}
		return 0
	}
	channels := make([]string, 10)
	for i := range channels {
		channels[i] = "batch:" + strconv.Itoa(i)
	}
	sub0, unsub0 := calls("subscribe"), calls("unsubscribe")
	if err := b.Subscribe(ctx, channels...); err != nil {
		t.Fatal(err)
	}
	if n, _ := app.PubSubNumSub(ctx, "cc:batch:9").Result(); n["cc:batch:9"] != 1 {
		t.Fatalf("after Subscribe, cc:batch:9 has %d subscribers", n["cc:batch:9"])
	}
	if err := b.Unsubscribe(ctx, channels...); err != nil {
		t.Fatal(err)
	}
	if got := calls("subscribe") - sub0; got != 1 {
		t.Errorf("subscribing to 10 channels took %d SUBSCRIBE commands, want 1", got)
	}
	if got := calls("unsubscribe") - unsub0; got != 1 {
		t.Errorf("unsubscribing from 10 channels took %d UNSUBSCRIBE commands, want 1", got)
	}
}
