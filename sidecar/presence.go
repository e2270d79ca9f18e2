package sidecar

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/admin"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/config"
	"github.com/cablecar/cablecar/presence"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/upgrade"
)

// presenceParts is the node's presence (SPEC §11): the tracker the hub
// feeds, its store (Redis's beside the registry, else memory), and the
// poster of presence.callback_path.
type presenceParts struct {
	log     zerolog.Logger
	tracker *presence.Tracker
	redis   *presence.Redis // nil with the in-memory broker
	poster  *presence.Poster
	hub     *upgrade.Hub
	stop    context.CancelFunc
	done    chan struct{}
}

// presenceConfig is what the presence section tells the parts.
type presenceConfig struct {
	leaveDelay   time.Duration
	callbackPath string
}

func presenceSection(cfg *config.Config) presenceConfig {
	return presenceConfig{leaveDelay: cfg.Presence.LeaveDelay, callbackPath: cfg.Presence.CallbackPath}
}

// newPresence builds the node's presence and hands it to the hub. rb is
// the Redis broker, nil with the in-memory one.
func newPresence(pc presenceConfig, rcfg presence.RedisConfig, rb *pubsub.Redis, hub *upgrade.Hub,
	cb *callback.Client, log zerolog.Logger) *presenceParts {
	p := &presenceParts{log: log, hub: hub}
	var store presence.Store = presence.NewMemory()
	var outbox presence.Outbox
	if rb != nil {
		rcfg.Outbox = pc.callbackPath != ""
		p.redis = presence.NewRedis(rb.Client(), rcfg, log)
		store, outbox = p.redis, p.redis
	}
	if pc.callbackPath != "" {
		path := pc.callbackPath
		p.poster = presence.NewPoster(func(ctx context.Context, body []byte) (int, error) {
			return cb.PostPresence(ctx, path, body)
		}, outbox, log)
	}
	p.tracker = presence.NewTracker(presence.Config{
		LeaveDelay: pc.leaveDelay,
		Counts:     hub.Members,
		Notify:     p.notify,
	}, store, log)
	hub.EnablePresence(p.tracker)
	return p
}

// notify announces a join or leave to the subscribers and the app.
func (p *presenceParts) notify(ev presence.Event) {
	if !ev.Taken {
		p.hub.PresenceNotify(ev)
	}
	if p.poster != nil {
		p.poster.Add(ev)
	}
}

// run starts the presence's goroutines.
func (p *presenceParts) run() {
	ctx, cancel := context.WithCancel(context.Background())
	p.stop, p.done = cancel, make(chan struct{})
	go p.tracker.Run()
	if p.poster != nil {
		go p.poster.Run()
	}
	go func() {
		defer close(p.done)
		if p.redis != nil {
			p.redis.Run(ctx, p.tracker.RewriteAll, func(evs []presence.Event) {
				for _, ev := range evs {
					p.notify(ev)
				}
			})
		}
	}()
}

// close stops the presence: what is not written or posted stays (in
// Redis, for a survivor once this node's lease is gone).
func (p *presenceParts) close() {
	p.tracker.Close()
	p.tracker.Wait()
	if p.poster != nil {
		p.poster.Close()
	}
	if p.stop != nil {
		p.stop()
		<-p.done
	}
}

// read answers admin GET /presence. It first waits (bounded) for this
// node's changes made before the request to be in the store: an app that
// asks how many are left while handling a close event (Iodine's count in
// on_close) must see that connection gone, not the count of a few
// milliseconds before.
func (p *presenceParts) read(ctx context.Context, channel string) (any, error) {
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	_ = p.tracker.Synced(sctx) // late: read what is there
	cancel()
	return p.tracker.Read(ctx, channel)
}

// statusChannels bounds the channels counts reads each second: the status
// page shows the busiest few, and each read is a round trip with Redis.
const statusChannels = 50

// counts is the status page's presence (admin.StatusSources.Presence):
// the n channels this node holds ids in with the most present ids, as the
// store counts them across nodes; nil while no one is present here.
func (p *presenceParts) counts(n int) []admin.PresenceCount {
	chans := p.tracker.Channels()
	if len(chans) == 0 {
		return nil
	}
	slices.Sort(chans)
	chans = chans[:min(len(chans), statusChannels)]
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	out := make([]admin.PresenceCount, 0, len(chans))
	for _, ch := range chans {
		snap, err := p.tracker.Read(ctx, ch)
		if err != nil {
			continue
		}
		out = append(out, admin.PresenceCount{Channel: ch, Present: len(snap.Members)})
	}
	slices.SortFunc(out, func(a, b admin.PresenceCount) int {
		if a.Present != b.Present {
			return b.Present - a.Present
		}
		return strings.Compare(a.Channel, b.Channel)
	})
	return out[:min(len(out), n)]
}
