package pubsub

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// shardedSubscriber holds one connection per cluster master that owns the
// slot of a subscribed channel, with one SSUBSCRIBE per channel (Redis
// refuses one command over channels of different slots).
//
// go-redis would reconnect a broken PubSub and resubscribe all its
// channels in one SSUBSCRIBE, which a cluster refuses (CROSSSLOT). So a
// shard connection is never reused after an error: it is closed, and its
// channels are subscribed again, one by one, on whichever master owns
// their slot by then. The same happens to a channel whose slot moved
// (Redis tells its subscribers with an unrequested sunsubscribe).
type shardedSubscriber struct {
	cc  *redis.ClusterClient
	log zerolog.Logger

	mu      sync.Mutex
	ctx     context.Context
	h       handler
	shards  map[string]*shardConn // by master address
	owner   map[string]*shardConn // channel → the shard it is subscribed on
	want    map[string]bool       // channels that should be subscribed
	orphans map[string]bool       // wanted, but their shard failed: to resubscribe
	kick    chan struct{}         // wakes the resubscriber
}

type shardConn struct {
	addr string
	ps   *redis.PubSub
	dead bool // guarded by shardedSubscriber.mu
}

func newShardedSubscriber(cc *redis.ClusterClient, log zerolog.Logger) *shardedSubscriber {
	return &shardedSubscriber{
		cc:      cc,
		log:     log,
		shards:  map[string]*shardConn{},
		owner:   map[string]*shardConn{},
		want:    map[string]bool{},
		orphans: map[string]bool{},
		kick:    make(chan struct{}, 1),
	}
}

// run resubscribes orphaned channels until ctx ends; each shard's
// receiving runs in a goroutine of its own.
func (s *shardedSubscriber) run(ctx context.Context, h handler) {
	s.mu.Lock()
	s.ctx, s.h = ctx, h
	s.mu.Unlock()
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		for ctx.Err() == nil {
			s.mu.Lock()
			var todo []string
			for ch := range s.orphans {
				todo = append(todo, ch)
			}
			s.mu.Unlock()
			if len(todo) == 0 {
				fails = 0
				break
			}
			s.cc.ReloadState(ctx)
			if err := s.subscribe(ctx, todo...); err != nil {
				h.setDown(err)
				fails++
				sleep(ctx, backoff(fails))
				continue
			}
			fails = 0
		}
	}
}

func (s *shardedSubscriber) subscribe(ctx context.Context, channels ...string) error {
	var firstErr error
	for _, ch := range channels {
		if err := s.subscribeOne(ctx, ch); err != nil {
			s.mu.Lock()
			if s.want[ch] {
				s.orphans[ch] = true
			}
			s.mu.Unlock()
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if firstErr != nil {
		s.wake()
	}
	return firstErr
}

func (s *shardedSubscriber) subscribeOne(ctx context.Context, ch string) error {
	master, err := s.cc.MasterForKey(ctx, ch)
	if err != nil {
		return fmt.Errorf("finding the shard of %q: %w", ch, err)
	}
	addr := master.Options().Addr
	s.mu.Lock()
	s.want[ch] = true
	if old := s.owner[ch]; old != nil && !old.dead {
		s.mu.Unlock()
		return nil
	}
	sc := s.shards[addr]
	if sc == nil || sc.dead {
		sc = &shardConn{addr: addr, ps: master.Subscribe(context.Background())}
		s.shards[addr] = sc
		go s.receive(sc)
	}
	s.owner[ch] = sc
	delete(s.orphans, ch)
	s.mu.Unlock()
	if err := sc.ps.SSubscribe(ctx, ch); err != nil {
		s.fail(sc, err)
		return fmt.Errorf("SSUBSCRIBE %q on %s: %w", ch, addr, err)
	}
	return nil
}

func (s *shardedSubscriber) unsubscribe(ctx context.Context, channels ...string) error {
	var firstErr error
	for _, ch := range channels {
		s.mu.Lock()
		delete(s.want, ch)
		delete(s.orphans, ch)
		sc := s.owner[ch]
		delete(s.owner, ch)
		// dead is read under the lock that fail and close write it under.
		live := sc != nil && !sc.dead
		s.mu.Unlock()
		if !live {
			continue
		}
		if err := sc.ps.SUnsubscribe(ctx, ch); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// receive reads one shard's connection until it fails.
func (s *shardedSubscriber) receive(sc *shardConn) {
	s.mu.Lock()
	ctx, h := s.ctx, s.h
	s.mu.Unlock()
	if ctx == nil {
		ctx = context.Background()
	}
	for {
		msg, err := sc.ps.Receive(ctx)
		if err != nil {
			if !errors.Is(err, redis.ErrClosed) && ctx.Err() == nil {
				s.fail(sc, err)
			}
			return
		}
		switch m := msg.(type) {
		case *redis.Message:
			h.received(m.Channel, []byte(m.Payload))
		case *redis.Subscription:
			switch m.Kind {
			case "ssubscribe":
				h.subscribed(m.Channel)
			case "sunsubscribe":
				s.moved(sc, m.Channel)
			}
		}
	}
}

// moved handles a sunsubscribe: requested (nothing to do) or sent by Redis
// because the channel's slot moved (subscribe again where it is now).
func (s *shardedSubscriber) moved(sc *shardConn, ch string) {
	s.mu.Lock()
	if s.want[ch] && s.owner[ch] == sc {
		delete(s.owner, ch)
		s.orphans[ch] = true
		s.log.Info().Str("channel", ch).Str("shard", sc.addr).Msg("channel's slot moved; subscribing where it lives now")
	}
	s.mu.Unlock()
	s.wake()
}

// fail retires a shard connection and orphans its channels.
func (s *shardedSubscriber) fail(sc *shardConn, err error) {
	s.mu.Lock()
	if sc.dead {
		s.mu.Unlock()
		return
	}
	sc.dead = true
	if s.shards[sc.addr] == sc {
		delete(s.shards, sc.addr)
	}
	for ch, owner := range s.owner {
		if owner == sc {
			delete(s.owner, ch)
			s.orphans[ch] = true
		}
	}
	h := s.h
	s.mu.Unlock()
	_ = sc.ps.Close()
	if h != nil {
		h.setDown(fmt.Errorf("shard %s: %w", sc.addr, err))
	}
	s.wake()
}

func (s *shardedSubscriber) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// ping checks every shard connection; all must answer and no channel may
// be waiting for a new shard.
func (s *shardedSubscriber) ping(ctx context.Context) error {
	s.mu.Lock()
	shards := make([]*shardConn, 0, len(s.shards))
	for _, sc := range s.shards {
		shards = append(shards, sc)
	}
	orphans, h := len(s.orphans), s.h
	s.mu.Unlock()
	for _, sc := range shards {
		if err := sc.ps.Ping(ctx); err != nil {
			s.fail(sc, err)
			return err
		}
	}
	if orphans > 0 {
		return fmt.Errorf("%d channels waiting to be subscribed again", orphans)
	}
	if len(shards) == 0 {
		if err := s.cc.Ping(ctx).Err(); err != nil {
			return err
		}
	}
	if h != nil {
		h.alive()
	}
	return nil
}

func (s *shardedSubscriber) close() {
	s.mu.Lock()
	shards := s.shards
	s.shards = map[string]*shardConn{}
	for _, sc := range shards {
		sc.dead = true
	}
	s.mu.Unlock()
	for _, sc := range shards {
		_ = sc.ps.Close()
	}
}
