package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RedisCluster is a Redis Cluster of three masters without replicas on
// 127.0.0.1, with no persistence, for one test.
type RedisCluster struct {
	Addrs []string // 127.0.0.1:port of each master
	// URL is the value for broker.url:
	// redis+cluster://ADDR0?addr=ADDR1&addr=ADDR2.
	URL string

	t     testing.TB
	procs []*process
}

// clusterSize is the number of masters: the least redis-cli accepts.
const clusterSize = 3

// StartRedisCluster starts three cluster-enabled redis-servers on free
// ports, joins them into one cluster that covers every slot, and waits until
// every node says cluster_state:ok and knows the other two. They are killed
// when the test ends.
func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	requireTool(t, "redis-server")
	cli := requireTool(t, "redis-cli")
	rc := &RedisCluster{t: t}
	t.Cleanup(func() {
		for _, p := range rc.procs {
			p.stop(syscall.SIGKILL, 0)
		}
	})

	for range clusterSize {
		port := FreePort(t)
		// The bus port is port+10000 unless set; with ports from the
		// ephemeral range that may be past 65535 or taken, so each node
		// gets a free one of its own.
		bus := FreePort(t)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		out := &Output{}
		dumpOnFailure(t, "redis-server (cluster) "+addr, out)
		cmd := exec.Command("redis-server",
			"--bind", "127.0.0.1",
			"--port", strconv.Itoa(port),
			"--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000",
			"--save", "",
			"--appendonly", "no",
			"--dir", t.TempDir(),
			"--daemonize", "no",
			"--loglevel", "warning",
		)
		cmd.Stdout, cmd.Stderr = out, out
		rc.procs = append(rc.procs, startProcess(t, "redis-server (cluster)", cmd))
		rc.Addrs = append(rc.Addrs, addr)
	}
	for i, addr := range rc.Addrs {
		proc := rc.procs[i]
		var exited bool
		WaitFor(t, 10*time.Second, "cluster redis-server to answer PING on "+addr, func() bool {
			if proc.exited() {
				exited = true
				return true
			}
			v, err := RedisDo(addr, "PING")
			return err == nil && v == "PONG"
		})
		if exited {
			t.Fatalf("cluster redis-server on %s exited before answering PING: %v", addr, proc.err)
		}
	}

	// redis-cli assigns the slots, introduces the nodes to each other and
	// waits until they agree on the configuration.
	args := append([]string{"--cluster", "create"}, rc.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out := &Output{}
	cmd := exec.Command(cli, args...)
	cmd.Stdout, cmd.Stderr = out, out
	create := startProcess(t, "redis-cli --cluster create", cmd)
	if !create.wait(30 * time.Second) {
		create.stop(syscall.SIGKILL, 0)
		t.Fatalf("redis-cli --cluster create still running after 30s:\n%s", out.String())
	}
	if code := create.exitCode(); code != 0 || !strings.Contains(out.String(), "All 16384 slots covered") {
		t.Fatalf("redis-cli --cluster create exited %d:\n%s", code, out.String())
	}

	// redis-cli returns once the configurations agree; the state may lag.
	for _, addr := range rc.Addrs {
		var last string
		if !poll(15*time.Second, func() bool {
			v, err := RedisDo(addr, "CLUSTER", "INFO")
			if err != nil {
				last = err.Error()
				return false
			}
			b, _ := v.([]byte)
			last = string(b)
			return strings.Contains(last, "cluster_state:ok") &&
				strings.Contains(last, "cluster_slots_assigned:16384") &&
				strings.Contains(last, "cluster_known_nodes:"+strconv.Itoa(clusterSize))
		}) {
			t.Fatalf("cluster node %s not ready after 15s; CLUSTER INFO:\n%s\nredis-cli said:\n%s", addr, last, out.String())
		}
	}

	q := url.Values{}
	for _, a := range rc.Addrs[1:] {
		q.Add("addr", a)
	}
	rc.URL = "redis+cluster://" + rc.Addrs[0] + "?" + q.Encode()
	return rc
}

// Do sends one command to the cluster, starting at the first master and
// following MOVED redirections (see RedisDo for the reply). The slots never
// move in these tests, so there is no ASK to follow. Like RedisDo it never
// fails the test.
func (rc *RedisCluster) Do(args ...any) (any, error) {
	addr := rc.Addrs[0]
	for range 3 {
		v, err := RedisDo(addr, args...)
		var re RedisError
		if !errors.As(err, &re) {
			return v, err
		}
		// MOVED <slot> <host:port>
		f := strings.Fields(string(re))
		if len(f) != 3 || f[0] != "MOVED" {
			return v, err
		}
		addr = f[2]
	}
	return nil, fmt.Errorf("%v: more than 3 cluster redirections", args[0])
}

// SPublish is SPUBLISH channel payload on the master owning the channel's
// slot, the channel taken as is (with any prefix already on it); it returns
// how many subscribers got it.
func (rc *RedisCluster) SPublish(channel string, payload []byte) (int64, error) {
	return redisInt(rc.Do("SPUBLISH", channel, payload))
}

// ShardChannels is PUBSUB SHARDCHANNELS pattern asked of every master: the
// shard channels someone is subscribed to, each with the master it is on.
func (rc *RedisCluster) ShardChannels(pattern string) (map[string]string, error) {
	out := map[string]string{}
	for _, addr := range rc.Addrs {
		chans, err := redisStrings(RedisDo(addr, "PUBSUB", "SHARDCHANNELS", pattern))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", addr, err)
		}
		for _, ch := range chans {
			out[ch] = addr
		}
	}
	return out, nil
}

// SlotOwner is the master that serves key's hash slot.
func (rc *RedisCluster) SlotOwner(key string) (string, error) {
	v, err := RedisDo(rc.Addrs[0], "CLUSTER", "KEYSLOT", key)
	slot, err := redisInt(v, err)
	if err != nil {
		return "", err
	}
	slots, err := RedisDo(rc.Addrs[0], "CLUSTER", "SLOTS")
	if err != nil {
		return "", err
	}
	ranges, _ := slots.([]any)
	for _, r := range ranges {
		// [start, end, [host, port, id…], replicas…]
		e, _ := r.([]any)
		if len(e) < 3 {
			continue
		}
		lo, _ := e[0].(int64)
		hi, _ := e[1].(int64)
		master, _ := e[2].([]any)
		if slot < lo || slot > hi || len(master) < 2 {
			continue
		}
		host, _ := master[0].([]byte)
		port, _ := master[1].(int64)
		return net.JoinHostPort(string(host), strconv.FormatInt(port, 10)), nil
	}
	return "", fmt.Errorf("no master serves slot %d of %q", slot, key)
}
