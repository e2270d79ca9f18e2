package presence

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Outbox is where the events still due to the app wait in Redis (Redis
// implements it), so that a survivor posts those of a lost node, same ids,
// and that events of one (channel, id) decided on different nodes reach
// the app in the order they were decided.
type Outbox interface {
	// Ready reports whether ev comes first among its (channel, id)'s
	// events still due.
	Ready(ctx context.Context, ev Event) (bool, error)
	// Done forgets ev: the app took it, or refused it for good.
	Done(ctx context.Context, ev Event) error
}

// PostFunc makes one attempt of the presence callback with body: the
// app's status, or an error when it could not be asked.
type PostFunc func(ctx context.Context, body []byte) (status int, err error)

// Poster posts each join and leave to the app (presence.callback_path):
// signed by post, retried with backoff for as long as Cablecar runs (a
// 5xx, 429 or a failure to connect; another 4xx is the app's refusal and
// drops the event, logged), in order per (channel, id). At least once:
// the event's id stays the same across retries and nodes, so the app
// dedupes by it.
type Poster struct {
	post   PostFunc
	outbox Outbox // nil with one node
	log    zerolog.Logger

	mu      sync.Mutex
	queue   []Event
	kick    chan struct{}
	stop    chan struct{}
	stopped chan struct{}

	// Tests shorten these.
	backoffBase, backoffCap, wait time.Duration
}

// NewPoster builds a poster; Run starts it.
func NewPoster(post PostFunc, outbox Outbox, log zerolog.Logger) *Poster {
	return &Poster{post: post, outbox: outbox, log: log,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{}),
		backoffBase: 100 * time.Millisecond, backoffCap: 5 * time.Second, wait: 200 * time.Millisecond}
}

// Add queues events, in order.
func (p *Poster) Add(evs ...Event) {
	p.mu.Lock()
	p.queue = append(p.queue, evs...)
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Pending is how many events wait.
func (p *Poster) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// Close stops posting; what waits stays in the outbox for a survivor.
func (p *Poster) Close() {
	close(p.stop)
	<-p.stopped
}

// Run posts until Close.
func (p *Poster) Run() {
	defer close(p.stopped)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.stop
		cancel()
	}()
	for {
		i, ev, ok := p.next(ctx)
		if !ok {
			t := time.NewTimer(p.wait)
			select {
			case <-p.stop:
				t.Stop()
				return
			case <-p.kick:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		if !p.deliver(ctx, ev) {
			return
		}
		p.mu.Lock()
		p.queue = append(p.queue[:i], p.queue[i+1:]...)
		p.mu.Unlock()
	}
}

// next is the first queued event that may go now: the first of its
// (channel, id) here, and, with an outbox, everywhere.
func (p *Poster) next(ctx context.Context) (int, Event, bool) {
	p.mu.Lock()
	queue := append([]Event(nil), p.queue...)
	p.mu.Unlock()
	seen := map[key]bool{}
	for i, ev := range queue {
		k := key{ev.Channel, ev.Who}
		if seen[k] {
			continue
		}
		seen[k] = true
		if p.outbox == nil {
			return i, ev, true
		}
		ok, err := p.outbox.Ready(ctx, ev)
		if err != nil {
			if ctx.Err() == nil {
				p.log.Debug().Err(err).Msg("presence callback: asking Redis for the order failed; trying again")
			}
			return 0, Event{}, false
		}
		if ok {
			return i, ev, true
		}
	}
	return 0, Event{}, false
}

// deliver posts ev until the app takes or refuses it; false when stopped.
func (p *Poster) deliver(ctx context.Context, ev Event) bool {
	body, _ := json.Marshal(struct {
		Events []Event `json:"events"`
	}{[]Event{ev}})
	backoff := p.backoffBase
	for attempt := 1; ; attempt++ {
		status, err := p.post(ctx, body)
		switch {
		case ctx.Err() != nil:
			return false
		case err == nil && status >= 200 && status < 300:
			p.done(ctx, ev)
			return true
		case err == nil && status != 429 && status < 500:
			p.log.Warn().Int("status", status).Str("event", ev.ID).Str("channel", ev.Channel).
				Msg("presence callback refused by the app: event dropped")
			p.done(ctx, ev)
			return true
		}
		ev := p.log.Debug()
		if attempt == 1 {
			ev = p.log.Warn()
		}
		ev.Err(err).Int("status", status).Int("attempt", attempt).Msg("presence callback failed; retrying")
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-p.stop:
			t.Stop()
			return false
		case <-t.C:
		}
		backoff = min(2*backoff, p.backoffCap)
	}
}

func (p *Poster) done(ctx context.Context, ev Event) {
	if p.outbox == nil {
		return
	}
	for ctx.Err() == nil {
		if err := p.outbox.Done(ctx, ev); err == nil {
			return
		}
		t := time.NewTimer(p.wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}
