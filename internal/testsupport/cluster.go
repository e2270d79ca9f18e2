package testsupport

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of three masters without replicas.
type Cluster struct {
	Addrs []string // host:port of each master
	// Nodes are the masters' servers, in the order of Addrs. Kill then
	// Start brings a master back on its port with its nodes.conf, so it
	// rejoins the cluster (with no data).
	Nodes []*Redis
}

// ClusterOptions tunes StartClusterWith; the zero value is what
// StartCluster does.
type ClusterOptions struct {
	// FreePort picks each node's port and cluster-bus port; nil asks the
	// kernel for a free one.
	FreePort func(testing.TB) int
	// Output, when set, gives the writer for the output of the node that
	// listens on addr; it is called before that node starts.
	Output func(addr string) io.Writer
}

// clusterSize is the number of masters: the least redis-cli accepts.
const clusterSize = 3

// StartCluster starts three servers, joins them into a cluster and returns
// once every node says cluster_state:ok. It skips the test without
// redis-cli, which forms the cluster.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	return StartClusterWith(t, ClusterOptions{})
}

// StartClusterWith starts three cluster-enabled servers as o says, joins
// them into one cluster that covers every slot, and returns once every
// node says cluster_state:ok and knows the other two. It skips the test
// without redis-cli, which forms the cluster.
func StartClusterWith(t testing.TB, o ClusterOptions) *Cluster {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Skip("redis-cli is not installed: it forms the test cluster (make deps)")
	}
	pick := o.FreePort
	if pick == nil {
		pick = freePort
	}
	c := &Cluster{}
	for range clusterSize {
		port := pick(t)
		// The bus port is port+10000 unless set; with ports from the
		// ephemeral range that may be past 65535 or taken, so each node
		// gets a free one of its own.
		bus := pick(t)
		ro := RedisOptions{Port: port, Args: []string{
			"--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", "nodes.conf", // in the node's own --dir
			"--cluster-node-timeout", "5000",
		}}
		if o.Output != nil {
			ro.Output = o.Output("127.0.0.1:" + strconv.Itoa(port))
		}
		s := StartRedisWith(t, ro)
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}

	// redis-cli assigns the slots, introduces the nodes to each other and
	// waits until they agree on the configuration.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "All 16384 slots covered") {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}

	// redis-cli returns once the configurations agree; the state may lag.
	for _, a := range c.Addrs {
		waitClusterNode(t, a, out)
	}
	return c
}

// waitClusterNode waits until the node at addr serves every slot and knows
// every master; on failure it shows what the node and redis-cli said.
func waitClusterNode(t testing.TB, addr string, cliOut []byte) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	var last string
	defer func() {
		if t.Failed() {
			t.Logf("CLUSTER INFO of %s:\n%s\nredis-cli --cluster create said:\n%s", addr, last, cliOut)
		}
	}()
	Eventually(t, "cluster_state:ok on "+addr, 15*time.Second, func() bool {
		info, err := rdb.ClusterInfo(context.Background()).Result()
		if err != nil {
			last = err.Error()
			return false
		}
		last = info
		return strings.Contains(info, "cluster_state:ok") &&
			strings.Contains(info, "cluster_slots_assigned:16384") &&
			strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d", clusterSize))
	})
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
		return err == nil && n.Load() == clusterSize
	})
	return rdb
}
