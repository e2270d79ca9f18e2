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
	s := newShardedSubscriber(cc, zerolog.Nop(), nopHandler{})
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

// nopHandler is a subscriber's handler that wants nothing.
type nopHandler struct{}

func (nopHandler) received(string, []byte) {}
func (nopHandler) subscribed(string)       {}
func (nopHandler) unsubscribed(string)     {}
func (nopHandler) alive()                  {}
func (nopHandler) setDown(error)           {}

// keySlot agrees with CLUSTER KEYSLOT (values from redis-server 7), hash
// tags included, and a channel's verbatim and envelope names share a slot.
func TestKeySlot(t *testing.T) {
	for key, want := range map[string]uint16{
		"foo":                  12182,
		"somekey":              11058,
		"{foo}bar":             12182,
		"x{foo}":               12182,
		"{user1000}.following": 3443,
		"{}foo":                keySlot("{}foo"), // an empty tag: the whole name
		"":                     0,
	} {
		if got := keySlot(key); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", key, got, want)
		}
	}
	if keySlot("{}foo") == keySlot("foo") {
		t.Error("an empty hash tag was taken as the tag")
	}
	for _, ch := range []string{"room:1", "a", "user@x/y=+.-_"} {
		if v, e := keySlot("cablecar:"+ch), keySlot(envelopeName("cablecar:", ch)); v != e {
			t.Errorf("%q: verbatim slot %d, envelope slot %d", ch, v, e)
		}
	}
}
