package pubsub

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// shardedSubscriber holds one connection per cluster master that owns the
// slot of a subscribed channel. A batch of channels is split by slot (Redis
// refuses one command over channels of different slots: a channel's
// verbatim and envelope names share one) and by shard, and every shard is
// sent its commands at the same time, so a slow shard delays only the
// channels it owns.
//
// go-redis would reconnect a broken PubSub and resubscribe all its
// channels in one SSUBSCRIBE, which a cluster refuses (CROSSSLOT). So a
// shard connection is never reused after an error: it is closed, and its
// channels are subscribed again on whichever master owns their slot by
// then. The same happens to a channel whose slot moved
// (Redis tells its subscribers with an unrequested sunsubscribe).
type shardedSubscriber struct {
	cc  *redis.ClusterClient
	log zerolog.Logger
	h   handler

	mu      sync.Mutex
	ctx     context.Context
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

func newShardedSubscriber(cc *redis.ClusterClient, log zerolog.Logger, h handler) *shardedSubscriber {
	return &shardedSubscriber{
		cc:      cc,
		log:     log,
		h:       h,
		shards:  map[string]*shardConn{},
		owner:   map[string]*shardConn{},
		want:    map[string]bool{},
		orphans: map[string]bool{},
		kick:    make(chan struct{}, 1),
	}
}

// run resubscribes orphaned channels until ctx ends; each shard's
// receiving runs in a goroutine of its own.
func (s *shardedSubscriber) run(ctx context.Context, _ handler) {
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
	h := s.h
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

// subscribe sends the SSUBSCRIBEs for channels, each shard's at the same
// time. A channel that cannot be sent now is left to the resubscriber.
func (s *shardedSubscriber) subscribe(ctx context.Context, channels ...string) error {
	bySlot := groupBySlot(channels)
	// The shard of each slot, from the cluster state go-redis keeps (it
	// asks the cluster only when it has none).
	masters := map[string]*redis.Client{}
	slotsOf := map[string][][]string{}
	var errs []error
	for _, names := range bySlot {
		master, err := s.cc.MasterForKey(ctx, names[0])
		if err != nil {
			s.orphan(names)
			errs = append(errs, fmt.Errorf("finding the shard of %q: %w", names[0], err))
			continue
		}
		addr := master.Options().Addr
		masters[addr] = master
		slotsOf[addr] = append(slotsOf[addr], names)
	}
	// Each slot goes to the connection that holds its channels already, so
	// that a channel is never subscribed on two shards, or else to its
	// shard's connection, made if needed.
	var sends []shardSend
	byConn := map[*shardConn]int{}
	s.mu.Lock()
	for addr, slots := range slotsOf {
		for _, names := range slots {
			for _, ch := range names {
				s.want[ch] = true
			}
			sc := s.owner[names[0]]
			if sc == nil || sc.dead {
				sc = s.shards[addr]
				if sc == nil || sc.dead {
					sc = &shardConn{addr: addr, ps: masters[addr].Subscribe(context.Background())}
					s.shards[addr] = sc
					go s.receive(sc)
				}
			}
			for _, ch := range names {
				s.owner[ch] = sc
				delete(s.orphans, ch)
			}
			i, ok := byConn[sc]
			if !ok {
				i = len(sends)
				byConn[sc] = i
				sends = append(sends, shardSend{sc: sc})
			}
			sends[i].slots = append(sends[i].slots, names)
		}
	}
	s.mu.Unlock()
	errs = append(errs, s.send(sends, func(sc *shardConn, names []string) error {
		if err := sc.ps.SSubscribe(ctx, names...); err != nil {
			s.fail(sc, err)
			return fmt.Errorf("SSUBSCRIBE %q on %s: %w", names[0], sc.addr, err)
		}
		return nil
	})...)
	if len(errs) > 0 {
		s.wake()
		return errors.Join(errs...)
	}
	return nil
}

// orphan leaves wanted channels to the resubscriber.
func (s *shardedSubscriber) orphan(names []string) {
	s.mu.Lock()
	for _, ch := range names {
		s.want[ch] = true
		s.orphans[ch] = true
	}
	s.mu.Unlock()
}

// unsubscribe sends the SUNSUBSCRIBEs for channels to the shards holding
// them, at the same time. A channel no live connection holds is confirmed
// at once: its subscription went with its connection.
func (s *shardedSubscriber) unsubscribe(ctx context.Context, channels ...string) error {
	var (
		sends []shardSend
		gone  []string
	)
	byConn := map[*shardConn]int{}
	s.mu.Lock()
	for _, names := range groupBySlot(channels) {
		var sc *shardConn
		for _, ch := range names {
			delete(s.want, ch)
			delete(s.orphans, ch)
			if o := s.owner[ch]; o != nil && !o.dead {
				sc = o
			}
			delete(s.owner, ch)
		}
		// dead is read under the lock that fail and close write it under.
		if sc == nil {
			gone = append(gone, names...)
			continue
		}
		i, ok := byConn[sc]
		if !ok {
			i = len(sends)
			byConn[sc] = i
			sends = append(sends, shardSend{sc: sc})
		}
		sends[i].slots = append(sends[i].slots, names)
	}
	s.mu.Unlock()
	for _, ch := range gone {
		s.h.unsubscribed(ch)
	}
	return errors.Join(s.send(sends, func(sc *shardConn, names []string) error {
		if err := sc.ps.SUnsubscribe(ctx, names...); err != nil {
			// The connection is broken: its subscriptions are gone.
			for _, ch := range names {
				s.h.unsubscribed(ch)
			}
			return fmt.Errorf("SUNSUBSCRIBE %q on %s: %w", names[0], sc.addr, err)
		}
		return nil
	})...)
}

// shardSend is the commands for one shard connection, one per slot.
type shardSend struct {
	sc    *shardConn
	slots [][]string
}

// send runs each shard's commands, in a goroutine per shard when there are
// several, and returns their errors.
func (s *shardedSubscriber) send(sends []shardSend, cmd func(*shardConn, []string) error) []error {
	one := func(ss shardSend) error {
		for _, names := range ss.slots {
			if err := cmd(ss.sc, names); err != nil {
				return err
			}
		}
		return nil
	}
	if len(sends) == 1 {
		if err := one(sends[0]); err != nil {
			return []error{err}
		}
		return nil
	}
	errs := make([]error, len(sends))
	var wg sync.WaitGroup
	for i := range sends {
		wg.Go(func() { errs[i] = one(sends[i]) })
	}
	wg.Wait()
	return slices.DeleteFunc(errs, func(err error) bool { return err == nil })
}

// groupBySlot splits channel names by hash slot, in their first order.
func groupBySlot(names []string) [][]string {
	var groups [][]string
	index := map[uint16]int{}
	for _, n := range names {
		slot := keySlot(n)
		i, ok := index[slot]
		if !ok {
			i = len(groups)
			index[slot] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], n)
	}
	return groups
}

// receive reads one shard's connection until it fails.
func (s *shardedSubscriber) receive(sc *shardConn) {
	s.mu.Lock()
	ctx := s.ctx
	s.mu.Unlock()
	h := s.h
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
				h.unsubscribed(m.Channel)
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
	s.mu.Unlock()
	_ = sc.ps.Close()
	s.h.setDown(fmt.Errorf("shard %s: %w", sc.addr, err))
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
	orphans := len(s.orphans)
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
	s.h.alive()
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
