package pubsub

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// plainSubscriber holds one SUBSCRIBE connection. go-redis reconnects it
// on the next Receive after an error and resubscribes every channel.
type plainSubscriber struct {
	ps *redis.PubSub
}

func newPlainSubscriber(rdb redis.UniversalClient) *plainSubscriber {
	return &plainSubscriber{ps: rdb.Subscribe(context.Background())}
}

func (p *plainSubscriber) run(ctx context.Context, h handler) {
	fails := 0
	for ctx.Err() == nil {
		msg, err := p.ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, redis.ErrClosed) {
				return
			}
			h.setDown(err)
			fails++
			sleep(ctx, backoff(fails))
			continue
		}
		fails = 0
		switch m := msg.(type) {
		case *redis.Message:
			h.received(m.Channel, []byte(m.Payload))
		case *redis.Subscription:
			switch m.Kind {
			case "subscribe":
				h.subscribed(m.Channel)
			case "unsubscribe":
				h.unsubscribed(m.Channel)
			}
		case *redis.Pong:
			h.alive()
		}
	}
}

// subscribe sends one SUBSCRIBE for every channel. go-redis notes them
// first, so one that fails now is renewed on the next reconnection.
func (p *plainSubscriber) subscribe(ctx context.Context, channels ...string) error {
	return p.ps.Subscribe(ctx, channels...)
}

// unsubscribe sends one UNSUBSCRIBE for every channel. go-redis forgets
// them first, so one that fails now is not renewed.
func (p *plainSubscriber) unsubscribe(ctx context.Context, channels ...string) error {
	return p.ps.Unsubscribe(ctx, channels...)
}

func (p *plainSubscriber) ping(ctx context.Context) error { return p.ps.Ping(ctx) }

func (p *plainSubscriber) close() { _ = p.ps.Close() }

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
