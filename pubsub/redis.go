package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Redis names, under the configured prefix. Channel names cannot contain
// '~' (ValidateChannel), so nothing internal can collide with an app's
// channel:
//
//	<prefix><channel>               verbatim text broadcasts: PUBLISH from anyone
//	<prefix>~x:{<prefix><channel>}  broadcasts in the envelope (binary, except)
//	<prefix>~node:<node id>         sends and closes for one node's connections
//
// The envelope channel's hash tag is the verbatim channel's name, so on a
// Redis Cluster both live on the same shard and keep one publisher's order.
const (
	envelopeInfix = "~x:{"
	nodeInfix     = "~node:"
)

// envelopeName is the envelope channel of a verbatim Redis channel name.
func envelopeName(prefix, channel string) string {
	return prefix + envelopeInfix + prefix + channel + "}"
}

// RedisConfig is what the Redis broker needs.
type RedisConfig struct {
	URL    string // redis://, rediss://, redis+sentinel://, redis+cluster://, rediss+cluster://
	Prefix string
	Node   string // this node's id, as in its connection ids
	// History is what to record (SPEC §10, history_redis.go).
	History HistoryConfig
}

// Redis is the broker of several nodes: broadcasts travel over Redis
// pub/sub (sharded pub/sub on a Redis Cluster), so that a PUBLISH from the
// app, or a publish on any node, reaches every node with subscribers.
//
// A node holds one subscriber connection (one per shard on a cluster), not
// one per channel; the hub subscribes it only to channels it has local
// subscribers for (Broker). go-redis reconnects and resubscribes after an
// outage; Ready reports the outage meanwhile.
//
// Subscribe and Unsubscribe send their command and then wait for Redis's
// confirmations, which arrive on the subscriber connection after whatever
// was published to those channels before Redis took the command: so once
// Subscribe returns, what is published is delivered, and once Unsubscribe
// returns, nothing more is. No lock is held while they wait or send, so a
// slow shard holds up only the calls that need it.
type Redis struct {
	cfg     RedisConfig
	log     zerolog.Logger
	rdb     redis.UniversalClient // role publish
	subRdb  redis.UniversalClient // role pubsub: the subscriber's connections
	regRdb  redis.UniversalClient // role registry: Client
	cluster bool
	sub     subscriber
	metrics *redisMetrics
	hist    *redisHistory // nil: no history

	nodeChannel string
	sink        Sink
	// locate and forwards: where a connection lives that is not on the
	// node its id names (redis_direct.go).
	locate   Locator
	forwards chan Command

	mu sync.Mutex // guards joining and leaving, never held across a call to Redis
	// joining: Redis channel → closed when Redis confirms its subscription
	// (also the renewals after a reconnect); leaving: closed when Redis
	// confirms its unsubscription, or the connection holding it is lost.
	joining map[string]chan struct{}
	leaving map[string]chan struct{}

	connected atomic.Bool
	lastErr   atomic.Pointer[string]
	downSince atomic.Int64 // unix nanos; 0 while connected

	started atomic.Bool
	closed  atomic.Bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// handler is what a subscriber reports to.
type handler interface {
	received(channel string, payload []byte)
	subscribed(channel string)
	unsubscribed(channel string)
	alive()
	setDown(err error)
}

// subscriber is the receiving side: one connection with SUBSCRIBE on a
// plain Redis, or one per shard with SSUBSCRIBE on a cluster.
type subscriber interface {
	// run receives until ctx ends, reconnecting and resubscribing.
	run(ctx context.Context, h handler)
	// subscribe sends the subscription; the confirmation comes through
	// handler.subscribed. A channel subscribed already is confirmed again.
	subscribe(ctx context.Context, channels ...string) error
	// unsubscribe sends the unsubscription; the confirmation comes through
	// handler.unsubscribed, for channels not subscribed too.
	unsubscribe(ctx context.Context, channels ...string) error
	ping(ctx context.Context) error
	close()
}

var _ Broker = (*Redis)(nil)

// NewRedis builds the broker from its URL. It does not connect: Start does,
// and keeps trying when Redis is not there yet.
//
// It makes one client per role, each naming its connections (CLIENT
// SETNAME) cablecar:<node>:<role> — publish (publishes, commands, the
// readiness ping), pubsub (the subscriber connections) and registry (the
// records of live connections, see Client) — so that an operator reading
// CLIENT LIST can tell which node holds a connection and what it is for.
// Pools fill lazily, so a role that is not used holds no connection.
func NewRedis(cfg RedisConfig, log zerolog.Logger, reg prometheus.Registerer) (*Redis, error) {
	setRedisLogger(log)
	opt, err := parseRedisURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	rdb, cluster := newNamedClient(opt, cfg.Node, "publish")
	subRdb, _ := newNamedClient(opt, cfg.Node, "pubsub")
	regRdb, _ := newNamedClient(opt, cfg.Node, "registry")
	r := &Redis{
		cfg:         cfg,
		log:         log.With().Str("component", "broker").Logger(),
		rdb:         rdb,
		subRdb:      subRdb,
		regRdb:      regRdb,
		cluster:     cluster,
		metrics:     newRedisMetrics(reg),
		nodeChannel: cfg.Prefix + nodeInfix + cfg.Node,
		joining:     map[string]chan struct{}{},
		leaving:     map[string]chan struct{}{},
	}
	r.hist = newRedisHistory(r, cfg.History)
	if cluster {
		r.sub = newShardedSubscriber(subRdb.(*redis.ClusterClient), r.log, r)
	} else {
		r.sub = newPlainSubscriber(subRdb)
	}
	return r, nil
}

// Client is the Redis client for the connection registry (its connections
// are named cablecar:<node>:registry). The broker owns it: Close closes it.
func (r *Redis) Client() redis.UniversalClient { return r.regRdb }

// Start subscribes to this node's command channel and begins delivering to
// sink. Redis being down is not an error: the broker keeps reconnecting and
// Ready says why it is not ready.
func (r *Redis) Start(ctx context.Context, sink Sink) error {
	if sink == nil {
		return errors.New("pubsub: Start with a nil sink")
	}
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("pubsub: broker already started")
	}
	r.sink = sink
	runCtx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	connecting := "connecting"
	r.lastErr.Store(&connecting)
	r.wg.Add(3)
	go func() { defer r.wg.Done(); r.sub.run(runCtx, r) }()
	go func() { defer r.wg.Done(); r.watch(runCtx) }()
	go func() { defer r.wg.Done(); r.forwardLoop(runCtx) }()

	// The node channel is subscribed for as long as the node lives.
	ready := r.awaitJoins(r.nodeChannel)[0]
	if err := r.sub.subscribe(runCtx, r.nodeChannel); err != nil {
		r.log.Warn().Err(err).Msg("Redis is not reachable yet; retrying in the background")
		return nil
	}
	wait, cancelWait := context.WithTimeout(ctx, 2*time.Second)
	defer cancelWait()
	select {
	case <-ready:
	case <-wait.Done():
		r.log.Warn().Msg("Redis has not confirmed this node's subscription yet; retrying in the background")
	}
	return nil
}

func (r *Redis) usable() error {
	switch {
	case r.closed.Load():
		return ErrClosed
	case !r.started.Load():
		return ErrNotStarted
	}
	return nil
}

// redisNames are the Redis channels of channels: each one's verbatim
// channel and then its envelope channel.
func (r *Redis) redisNames(channels []string) []string {
	names := make([]string, 0, 2*len(channels))
	for _, ch := range channels {
		names = append(names, r.cfg.Prefix+ch, envelopeName(r.cfg.Prefix, ch))
	}
	return names
}

// awaitJoins returns what closes once Redis confirmed each name's
// subscription. A name already awaited shares the earlier wait: Redis
// confirms every SUBSCRIBE, a repeated one too.
func (r *Redis) awaitJoins(names ...string) []chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	waits := make([]chan struct{}, len(names))
	for i, n := range names {
		w := r.joining[n]
		if w == nil {
			w = make(chan struct{})
			r.joining[n] = w
		}
		waits[i] = w
	}
	return waits
}

// Subscribe subscribes the node to channels in one command (one per slot on
// a cluster, sent to the shards at once) and waits for Redis to confirm
// them all.
func (r *Redis) Subscribe(ctx context.Context, channels ...string) error {
	for _, ch := range channels {
		if err := ValidateChannel(ch); err != nil {
			return err
		}
	}
	if err := r.usable(); err != nil {
		return err
	}
	if len(channels) == 0 {
		return nil
	}
	names := r.redisNames(channels)
	waits := r.awaitJoins(names...)
	// On an error the waits stay: the subscriber renews what it was asked
	// for once it is connected again, and the confirmation then ends the
	// wait of the caller's next try.
	if err := r.sub.subscribe(ctx, names...); err != nil {
		return fmt.Errorf("subscribing in Redis: %w", err)
	}
	for i, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return fmt.Errorf("Redis did not confirm the subscription to %q: %w", names[i], ctx.Err())
		}
	}
	return nil
}

// Unsubscribe ends the node's subscription to channels in one command (per
// slot on a cluster) and waits for Redis to confirm it, so that nothing
// that crossed the command on the wire arrives after it returns.
func (r *Redis) Unsubscribe(ctx context.Context, channels ...string) error {
	for _, ch := range channels {
		if err := ValidateChannel(ch); err != nil {
			return err
		}
	}
	if err := r.usable(); err != nil {
		return err
	}
	if len(channels) == 0 {
		return nil
	}
	names := r.redisNames(channels)
	r.mu.Lock()
	waits := make([]chan struct{}, len(names))
	for i, n := range names {
		// A subscription never confirmed is not waited for any more: its
		// caller gave up on it.
		delete(r.joining, n)
		w := r.leaving[n]
		if w == nil {
			w = make(chan struct{})
			r.leaving[n] = w
		}
		waits[i] = w
	}
	r.mu.Unlock()
	if err := r.sub.unsubscribe(ctx, names...); err != nil {
		// The subscriber forgot the channels before sending: it will not
		// renew them, and the connection that held them is broken.
		r.releaseLeaving(names...)
		return fmt.Errorf("unsubscribing in Redis: %w", err)
	}
	for i, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			r.releaseLeaving(names...)
			return fmt.Errorf("Redis did not confirm the unsubscription from %q: %w", names[i], ctx.Err())
		}
	}
	return nil
}

// releaseLeaving ends the waits for the unsubscription of names.
func (r *Redis) releaseLeaving(names ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range names {
		if w := r.leaving[n]; w != nil {
			close(w)
			delete(r.leaving, n)
		}
	}
}

// Publish sends every message in one round trip: plain text without an
// exception verbatim (so it looks exactly like an app's PUBLISH), the rest
// in the envelope.
func (r *Redis) Publish(ctx context.Context, msgs ...Message) error {
	for i := range msgs {
		if err := ValidateChannel(msgs[i].Channel); err != nil {
			return fmt.Errorf("pubsub: message %d: %w", i, err)
		}
	}
	if err := r.usable(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	pipe := r.rdb.Pipeline()
	var recorded map[int]*redis.Cmd // only allocated when some message is recorded
	for i := range msgs {
		m := &msgs[i]
		if r.hist.recorded(m) {
			if recorded == nil {
				recorded = make(map[int]*redis.Cmd, len(msgs))
			}
			recorded[i] = r.hist.queue(ctx, pipe, m)
			continue
		}
		if !m.Binary && m.Except == "" && m.Close == nil {
			r.publish(ctx, pipe, r.cfg.Prefix+m.Channel, m.Data)
		} else {
			r.publish(ctx, pipe, envelopeName(r.cfg.Prefix, m.Channel), encodeMessage(m))
		}
	}
	cmds, err := pipe.Exec(ctx)
	if recorded != nil {
		// A NOSCRIPT answer is the pipeline's error too: finish runs
		// those again and judges every recorded call; here the others.
		for i, c := range cmds {
			if recorded[i] == nil && c.Err() != nil {
				return fmt.Errorf("publishing to Redis: %w", c.Err())
			}
		}
		return r.hist.finish(ctx, msgs, recorded)
	}
	if err != nil {
		return fmt.Errorf("publishing to Redis: %w", err)
	}
	return nil
}

func (r *Redis) publish(ctx context.Context, pipe redis.Pipeliner, channel string, payload []byte) *redis.IntCmd {
	if r.cluster {
		return pipe.SPublish(ctx, channel, payload)
	}
	return pipe.Publish(ctx, channel, payload)
}

// Ready is nil while the subscriber connection is up and Redis answers.
func (r *Redis) Ready(ctx context.Context) error {
	if err := r.usable(); err != nil {
		return err
	}
	if !r.connected.Load() {
		msg := "not connected"
		if p := r.lastErr.Load(); p != nil {
			msg = *p
		}
		return fmt.Errorf("Redis: %s", msg)
	}
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("Redis: %w", err)
	}
	return nil
}

// Close stops the subscriber and closes the client.
func (r *Redis) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	if r.cancel != nil {
		r.cancel()
	}
	r.sub.close()
	r.wg.Wait()
	return errors.Join(r.rdb.Close(), r.subRdb.Close(), r.regRdb.Close())
}

// received is the subscriber's callback for every message.
func (r *Redis) received(channel string, payload []byte) {
	rest, ok := strings.CutPrefix(channel, r.cfg.Prefix)
	if !ok {
		return
	}
	switch {
	case channel == r.nodeChannel:
		cmd, err := decodeCommand(payload)
		if err != nil {
			r.metrics.decodeErrors.Inc()
			r.log.Warn().Err(err).Msg("undecodable command on this node's channel")
			return
		}
		r.metrics.receivedCommand.Inc()
		if !r.sink.Execute(cmd) {
			r.missed(cmd)
		}
	case strings.HasPrefix(rest, envelopeInfix):
		inner, ok := strings.CutPrefix(strings.TrimSuffix(rest[len(envelopeInfix):], "}"), r.cfg.Prefix)
		if !ok {
			return
		}
		m, err := decodeMessage(payload)
		if err != nil {
			r.metrics.decodeErrors.Inc()
			r.log.Warn().Err(err).Str("channel", rest).Msg("undecodable message in the envelope channel")
			return
		}
		m.Channel = inner
		r.metrics.receivedEnvelope.Inc()
		r.sink.Deliver(m)
	default:
		r.metrics.receivedVerbatim.Inc()
		r.sink.Deliver(Message{Channel: rest, Data: payload})
	}
}

// subscribed is the subscriber's callback for every confirmation,
// including those of the renewals after a reconnect.
func (r *Redis) subscribed(channel string) {
	r.alive()
	r.mu.Lock()
	ready := r.joining[channel]
	delete(r.joining, channel)
	r.mu.Unlock()
	if ready != nil {
		close(ready)
	}
}

// unsubscribed is the subscriber's callback for every confirmation of an
// unsubscription.
func (r *Redis) unsubscribed(channel string) { r.releaseLeaving(channel) }

// alive records that the subscriber connection works.
func (r *Redis) alive() {
	if r.connected.CompareAndSwap(false, true) {
		if since := r.downSince.Swap(0); since != 0 {
			d := time.Duration(time.Now().UnixNano() - since)
			r.metrics.outageSeconds.Add(d.Seconds())
			r.log.Info().Dur("after_ms", d).Msg("Redis connection restored; subscriptions renewed")
		}
		r.metrics.connected.Set(1)
	}
}

func (r *Redis) setDown(err error) {
	msg := err.Error()
	r.lastErr.Store(&msg)
	// A lost connection takes its subscriptions with it, and no
	// confirmation of an unsubscription will come: their waits end.
	// (On a cluster this ends the waits on every shard, not only the lost
	// one's; a message that crossed one of those is then still delivered,
	// and the hub drops it, having no subscriber for it.)
	r.mu.Lock()
	for n, w := range r.leaving {
		close(w)
		delete(r.leaving, n)
	}
	r.mu.Unlock()
	// Only the fall from connected counts: the first connection attempts
	// at start-up are not an outage.
	if r.connected.CompareAndSwap(true, false) {
		r.downSince.CompareAndSwap(0, time.Now().UnixNano())
		r.metrics.connected.Set(0)
		r.metrics.disconnects.Inc()
		if !r.closed.Load() {
			r.log.Warn().Err(err).Msg("Redis connection lost: broadcasts published meanwhile are lost; reconnecting")
		}
	}
}

// watch pings over the subscriber connection every second: it notices a
// dead connection that would otherwise only show on the next message, and
// it is what reconnects an idle subscriber.
func (r *Redis) watch(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := r.sub.ping(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.setDown(err)
		}
	}
}
