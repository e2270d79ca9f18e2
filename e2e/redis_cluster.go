package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// RedisCluster is a Redis Cluster of three masters without replicas on
// 127.0.0.1, with no persistence, for one test. testsupport launches and
// forms it; this adds the harness's ports, each node's output shown when
// the test fails, and the raw-protocol helpers below.
type RedisCluster struct {
	Addrs []string // 127.0.0.1:port of each master
	// URL is the value for broker.url:
	// redis+cluster://ADDR0?addr=ADDR1&addr=ADDR2.
	URL string
}

// StartRedisCluster starts three cluster-enabled redis-servers on free
// ports, joins them into one cluster that covers every slot, and waits until
// every node says cluster_state:ok and knows the other two. They are killed
// when the test ends.
func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	requireTool(t, "redis-server")
	requireTool(t, "redis-cli")
	c := testsupport.StartClusterWith(t, testsupport.ClusterOptions{
		FreePort: FreePort,
		Output: func(addr string) io.Writer {
			out := &Output{}
			dumpOnFailure(t, "redis-server (cluster) "+addr, out)
			return out
		},
	})
	rc := &RedisCluster{Addrs: c.Addrs}
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
