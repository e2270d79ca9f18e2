package pubsub_test

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/pubsub/pubsubtest"
)

// rtestServer is a real redis-server on a free loopback port, killed when
// the test ends; stop then start (same port, empty) is a Redis restart.
type rtestServer struct {
	t    testing.TB
	addr string
	port int
	cmd  *exec.Cmd
	args []string
}

func rtestPort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startRedisServer(t testing.TB, extra ...string) *rtestServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (make deps installs it)")
	}
	port := rtestPort(t)
	s := &rtestServer{t: t, port: port, addr: "127.0.0.1:" + strconv.Itoa(port)}
	s.args = append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no",
		"--dir", t.TempDir()}, extra...)
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *rtestServer) start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server", s.args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on %s did not answer within 10s", s.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *rtestServer) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// startRedisCluster starts three masters and joins them into a cluster.
func startRedisCluster(t testing.TB) []string {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skip("redis-cli is not installed")
	}
	var addrs []string
	for i := 0; i < 3; i++ {
		dir := t.TempDir()
		s := startRedisServer(t, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"))
		addrs = append(addrs, s.addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, a := range addrs {
		rdb := redis.NewClient(&redis.Options{Addr: a})
		for {
			info, _ := rdb.ClusterInfo(context.Background()).Result()
			if strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster not ok on %s: %s", a, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		rdb.Close()
	}
	return addrs
}

func clusterURL(addrs []string) string {
	u := "redis+cluster://" + addrs[0]
	for i, a := range addrs[1:] {
		if i == 0 {
			u += "?"
		} else {
			u += "&"
		}
		u += "addr=" + a
	}
	return u
}

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
		return newRedisBroker(t, "redis://"+s.addr, node)
	})
}

func TestRedisClusterContract(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node Redis Cluster")
	}
	addrs := startRedisCluster(t)
	pubsubtest.Run(t, func(t *testing.T, node string) pubsub.Broker {
		return newRedisBroker(t, clusterURL(addrs), node)
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
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
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
	url := "redis://" + s.addr
	b, got := startBroker(t, url, pubsub.NewNodeID())
	ctx := context.Background()
	app := redis.NewClient(&redis.Options{Addr: s.addr})
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
	url := "redis://" + s.addr
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
	b, got := startBroker(t, "redis://"+s.addr, pubsub.NewNodeID())
	ctx := context.Background()
	if err := b.Subscribe(ctx, "news"); err != nil {
		t.Fatal(err)
	}
	if err := b.Ready(ctx); err != nil {
		t.Fatalf("Ready before the outage: %v", err)
	}
	s.stop()
	waitUntil(t, "Ready to report the outage", func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return b.Ready(rctx) != nil
	})
	if err := b.Publish(ctx, pubsub.Message{Channel: "news", Data: []byte("lost")}); err == nil {
		t.Error("Publish during the outage reported success")
	}
	s.start()
	waitUntil(t, "Ready after the restart", func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return b.Ready(rctx) == nil
	})
	app := redis.NewClient(&redis.Options{Addr: s.addr})
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
	b, _ := startBroker(t, "redis://"+s.addr, pubsub.NewNodeID())
	ctx := context.Background()
	app := redis.NewClient(&redis.Options{Addr: s.addr})
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
	b, _ := startBroker(t, "redis://"+s.addr, node)
	ctx := context.Background()
	if err := b.Subscribe(ctx, "room:names"); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, pubsub.Message{Channel: "room:names", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	reg := pubsub.NewRegistry(b.Client(), pubsub.RegistryConfig{Prefix: "cc:", Node: node}, zerolog.Nop(), prometheus.NewRegistry())
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		reg.Run(rctx, func(context.Context, string, []pubsub.ConnRecord) error { return nil })
	}()
	t.Cleanup(func() { stop(); <-done })

	admin := redis.NewClient(&redis.Options{Addr: s.addr})
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
	b, _ := startBroker(t, "redis://"+s.addr+"?client_name=shop", node)
	if err := b.Publish(context.Background(), pubsub.Message{Channel: "x", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(&redis.Options{Addr: s.addr})
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
	b, _ := startBroker(t, "redis://"+s.addr, pubsub.NewNodeID())
	ctx := context.Background()
	app := redis.NewClient(&redis.Options{Addr: s.addr})
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
