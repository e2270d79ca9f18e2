package testsupport

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a redis-server on a free loopback port, without persistence,
// killed when the test ends. Kill then Start (same port, empty) is a
// Redis restart.
type Redis struct {
	t    testing.TB
	Addr string // host:port
	args []string
	cmd  *exec.Cmd
}

// StartRedis starts a redis-server with extra arguments, or skips the
// test when none is installed (make deps installs it).
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed: these tests run against a real one (make deps)")
	}
	port := freePort(t)
	s := &Redis{t: t, Addr: "127.0.0.1:" + strconv.Itoa(port)}
	s.args = append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", t.TempDir()}, extra...)
	s.Start()
	t.Cleanup(s.Kill)
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// URL is the server's redis:// URL.
func (s *Redis) URL() string { return "redis://" + s.Addr }

// Start starts the server (again, empty, after Kill) and returns once it
// answers PING.
func (s *Redis) Start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server", s.args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer rdb.Close()
	Eventually(s.t, "redis-server on "+s.Addr+" to answer", 10*time.Second, func() bool {
		return rdb.Ping(context.Background()).Err() == nil
	})
}

// Kill stops the server at once, as kill -9 would.
func (s *Redis) Kill() {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Client returns a client of the server, closed when the test ends.
func (s *Redis) Client(t testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Cluster is a Redis Cluster of three masters without replicas.
type Cluster struct {
	Addrs []string
}

// StartCluster starts three servers, joins them into a cluster and returns
// once every node says cluster_state:ok. It skips the test without
// redis-cli, which forms the cluster.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skip("redis-cli is not installed: it forms the test cluster (make deps)")
	}
	c := &Cluster{}
	for range 3 {
		s := StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(t.TempDir(), "nodes.conf"))
		c.Addrs = append(c.Addrs, s.Addr)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, a := range c.Addrs {
		rdb := redis.NewClient(&redis.Options{Addr: a})
		Eventually(t, "cluster_state:ok on "+a, 20*time.Second, func() bool {
			info, _ := rdb.ClusterInfo(context.Background()).Result()
			return strings.Contains(info, "cluster_state:ok")
		})
		rdb.Close()
	}
	return c
}

// URL is the cluster's redis+cluster:// URL, naming every node.
func (c *Cluster) URL() string {
	u := "redis+cluster://" + c.Addrs[0]
	for i, a := range c.Addrs[1:] {
		if i == 0 {
			u += "?"
		} else {
			u += "&"
		}
		u += "addr=" + a
	}
	return u
}

// Client returns a cluster client, closed when the test ends, once it
// sees all three masters.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { rdb.Close() })
	Eventually(t, "the cluster client to see every slot", 20*time.Second, func() bool {
		var n atomic.Int32
		err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
			n.Add(1)
			return m.Ping(ctx).Err()
		})
		return err == nil && n.Load() == 3
	})
	return rdb
}
