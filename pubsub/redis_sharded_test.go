package pubsub

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// A shard connection that fails while one of its channels is being
// unsubscribed: fail marks it dead under the subscriber's lock, and
// unsubscribe must read that mark under the same lock (go test -race
// reported the read after the unlock).
func TestShardedUnsubscribeWhileShardFails(t *testing.T) {
	// Nothing listens there: the commands fail at once, which is all this
	// needs; the race is on the subscriber's own bookkeeping.
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}, MaxRetries: -1})
	t.Cleanup(func() { cc.Close() })
	plain := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { plain.Close() })
	s := newShardedSubscriber(cc, zerolog.Nop())
	for range 200 {
		sc := &shardConn{addr: "127.0.0.1:1", ps: plain.Subscribe(context.Background())}
		s.mu.Lock()
		s.shards[sc.addr] = sc
		s.owner["ch"] = sc
		s.want["ch"] = true
		s.mu.Unlock()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); s.fail(sc, errors.New("shard went away")) }()
		go func() { defer wg.Done(); _ = s.unsubscribe(context.Background(), "ch") }()
		wg.Wait()
	}
}
