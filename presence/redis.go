package presence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/jsontext"
)

// Redis is the store of many nodes. In Redis, under broker.prefix:
//
//	~presence:{<channel>}  HASH   the channel's presence, every node's:
//	    <node>|<id>   "<conns>|<info JSON>"  a presence id this node holds
//	    <node>|       "<conns>"              this node's subscribed connections
//	    #|<id>        how many nodes hold the id: it is online while > 0
//	    !o|<event id> "<owner node>|<event JSON>"  a join or leave the app's
//	                  presence callback has not taken yet (with callback_path)
//	    !q|<id>       the id's pending event ids, in order, space-separated
//	~{<node>}:presence     SET    the channels the node has fields in
//	~{<node>}:preaper      STRING the node reaping this (lost) node's presence
//	~presence:nodes        SET    the nodes that may have presence fields
//
// Every change of one channel is one script on that channel's key (a
// Redis Cluster slot of its own), so the join or leave it makes is decided
// once, atomically, whichever nodes race: a node that writes <node>|<id>
// where #|<id> was 0 made the join; one that deletes the last made the
// leave. A node's set sits in its lease's slot ({<node>}), beside the
// registry's lease: when the lease lapses a survivor (reap.go) deletes the
// lost node's fields channel by channel, and the ids no one else holds
// leave; nothing is left behind. When Redis comes back empty, each node
// writes its own fields again, quietly (no join: nothing changed).
type Redis struct {
	rdb    redis.UniversalClient
	node   string
	pfx    string
	ttl    time.Duration
	delay  time.Duration
	outbox bool
	log    zerolog.Logger
	// lapsed is when each node's lease was first seen gone; Run's
	// goroutine only.
	lapsed map[string]time.Time

	// onLost is called when this node's fields are gone from Redis (it
	// restarted empty): the tracker writes them again.
	onLost func()
	// posted hears the events of lost nodes this node took over (their
	// leaves, and their callbacks still due).
	posted func([]Event)

	mu sync.Mutex
	// mine is what this node has in each channel, so that the channel
	// leaves the node's set when nothing is left.
	mine map[string]*mineIn
}

type mineIn struct {
	ids     map[string]struct{}
	counted bool
}

var _ Store = (*Redis)(nil)

// RedisConfig configures the Redis store.
type RedisConfig struct {
	Prefix   string        // broker.prefix
	Node     string        // this node's id, the registry's
	LeaseTTL time.Duration // broker.lease_ttl; 0 → 15 s
	// Outbox keeps each join and leave in Redis until the app's presence
	// callback took it (presence.callback_path is set).
	Outbox bool
	// LeaveDelay is presence.leave_delay: a lost node's presence is taken
	// out this long after its lease was first seen lapsed, as its own
	// drops would have been (a rolling restart's clients reconnect
	// meanwhile, elsewhere, and no one leaves).
	LeaveDelay time.Duration
}

// NewRedis builds the store over rdb (the broker's client).
func NewRedis(rdb redis.UniversalClient, cfg RedisConfig, log zerolog.Logger) *Redis {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Second
	}
	return &Redis{rdb: rdb, node: cfg.Node, pfx: cfg.Prefix, ttl: cfg.LeaseTTL, delay: cfg.LeaveDelay,
		outbox: cfg.Outbox, log: log, mine: map[string]*mineIn{}, lapsed: map[string]time.Time{}}
}

func (r *Redis) chanKey(channel string) string { return r.pfx + "~presence:{" + channel + "}" }
func (r *Redis) nodeSet(node string) string    { return r.pfx + "~{" + node + "}:presence" }
func (r *Redis) reaperKey(node string) string  { return r.pfx + "~{" + node + "}:preaper" }
func (r *Redis) nodesKey() string              { return r.pfx + "~presence:nodes" }

// leaseKey is the registry's lease of node (registry.keysOf): presence
// lives and dies with it.
func (r *Redis) leaseKey(node string) string { return r.pfx + "~{" + node + "}:lease" }

// Scripts on one channel's key.
var (
	// ARGV: node, id, "<conns>|<info>", quiet, event JSON up to its info,
	// outbox, event id → 1 joined.
	setScript = redis.NewScript(`
local f = ARGV[1] .. '|' .. ARGV[2]
if redis.call('HSET', KEYS[1], f, ARGV[3]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], '#|' .. ARGV[2], 1) ~= 1 or ARGV[4] == '1' then return 0 end
if ARGV[6] == '1' then
  local p = string.find(ARGV[3], '|', 1, true)
  redis.call('HSET', KEYS[1], '!o|' .. ARGV[7], ARGV[1] .. '|' .. ARGV[5] .. string.sub(ARGV[3], p + 1) .. '}')
  local q = redis.call('HGET', KEYS[1], '!q|' .. ARGV[2])
  if q then q = q .. ' ' .. ARGV[7] else q = ARGV[7] end
  redis.call('HSET', KEYS[1], '!q|' .. ARGV[2], q)
end
return 1`)
	// ARGV: node, id, quiet, event JSON up to its info, outbox, event id
	// → the info of an id that left, or false.
	delScript = redis.NewScript(`
local f = ARGV[1] .. '|' .. ARGV[2]
local v = redis.call('HGET', KEYS[1], f)
if not v then return false end
redis.call('HDEL', KEYS[1], f)
if redis.call('HINCRBY', KEYS[1], '#|' .. ARGV[2], -1) > 0 then return false end
redis.call('HDEL', KEYS[1], '#|' .. ARGV[2])
if ARGV[3] == '1' then return false end
local info = string.sub(v, string.find(v, '|', 1, true) + 1)
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], '!o|' .. ARGV[6], ARGV[1] .. '|' .. ARGV[4] .. info .. '}')
  local q = redis.call('HGET', KEYS[1], '!q|' .. ARGV[2])
  if q then q = q .. ' ' .. ARGV[6] else q = ARGV[6] end
  redis.call('HSET', KEYS[1], '!q|' .. ARGV[2], q)
end
return info`)
)

// eventHead is an event's JSON up to its info, which the script appends
// (with the closing brace) from what it holds.
func eventHead(ev *Event) string {
	b := make([]byte, 0, 160)
	b = append(b, `{"id":`...)
	b = jsontext.AppendString(b, ev.ID)
	b = append(b, `,"type":`...)
	b = jsontext.AppendString(b, ev.Type)
	b = append(b, `,"channel":`...)
	b = jsontext.AppendString(b, ev.Channel)
	b = append(b, `,"presence_id":`...)
	b = jsontext.AppendString(b, ev.Who)
	b = append(b, `,"at":`...)
	b = strconv.AppendInt(b, ev.At, 10)
	b = append(b, `,"info":`...)
	return string(b)
}

func b01(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Apply implements Store: one pipeline of a script per hold, and the
// counts and the node's set beside them.
func (r *Redis) Apply(ctx context.Context, holds []Hold, counts []Count) ([]Event, error) {
	if err := r.ensureScripts(ctx); err != nil {
		return nil, err
	}
	at := time.Now().UnixMilli()
	pipe := r.rdb.Pipeline()
	evs := make([]Event, len(holds))
	cmds := make([]*redis.Cmd, len(holds))
	touched := map[string]bool{}
	for i, h := range holds {
		typ := Join
		if h.Gone {
			typ = Leave
		}
		evs[i] = Event{ID: NewEventID(), Type: typ, Channel: h.Channel, Who: h.ID, Info: h.Info, At: at}
		k := []string{r.chanKey(h.Channel)}
		if h.Gone {
			cmds[i] = delScript.EvalSha(ctx, pipe, k, r.node, h.ID, b01(h.Quiet), eventHead(&evs[i]), b01(r.outbox), evs[i].ID)
		} else {
			touched[h.Channel] = true
			val := strconv.Itoa(h.Conns) + "|" + string(h.Info)
			cmds[i] = setScript.EvalSha(ctx, pipe, k, r.node, h.ID, val, b01(h.Quiet), eventHead(&evs[i]), b01(r.outbox), evs[i].ID)
		}
	}
	for _, c := range counts {
		f := r.node + "|"
		if c.Conns > 0 {
			touched[c.Channel] = true
			pipe.HSet(ctx, r.chanKey(c.Channel), f, c.Conns)
		} else {
			pipe.HDel(ctx, r.chanKey(c.Channel), f)
		}
	}
	// The node's set first lists a channel before a field of it can
	// outlive the node (a pipeline runs in order on one server; on a
	// Cluster the set's slot may be written a little after: a crash in
	// that gap leaves fields that the channel's next change of another
	// node's does not count, see docs/presence.md).
	if len(touched) > 0 {
		members := make([]any, 0, len(touched))
		for ch := range touched {
			members = append(members, ch)
		}
		pipe.SAdd(ctx, r.nodeSet(r.node), members...)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	var out []Event
	for i, h := range holds {
		v, err := cmds[i].Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return out, err
		case h.Gone:
			if s, ok := v.(string); ok {
				evs[i].Info = []byte(s)
				out = append(out, evs[i])
			}
		default:
			if n, ok := v.(int64); ok && n == 1 {
				out = append(out, evs[i])
			}
		}
	}
	r.remember(holds, counts)
	return out, nil
}

// ensureScripts loads the scripts into a Redis that lost them (a restart):
// a pipeline cannot fall back from EVALSHA to EVAL.
func (r *Redis) ensureScripts(ctx context.Context) error {
	ok, err := setScript.Exists(ctx, r.rdb).Result()
	if err == nil && len(ok) == 1 && ok[0] {
		ok, err = delScript.Exists(ctx, r.rdb).Result()
		if err == nil && len(ok) == 1 && ok[0] {
			return nil
		}
	}
	if err != nil {
		return err
	}
	for _, s := range allScripts {
		if err := s.Load(ctx, r.rdb).Err(); err != nil {
			return err
		}
	}
	return nil
}

// remember keeps what this node has per channel, and takes the channels
// where nothing is left out of its set.
func (r *Redis) remember(holds []Hold, counts []Count) {
	r.mu.Lock()
	var empty []any
	get := func(ch string) *mineIn {
		m := r.mine[ch]
		if m == nil {
			m = &mineIn{ids: map[string]struct{}{}}
			r.mine[ch] = m
		}
		return m
	}
	for _, h := range holds {
		if h.Gone {
			delete(get(h.Channel).ids, h.ID)
		} else {
			get(h.Channel).ids[h.ID] = struct{}{}
		}
	}
	for _, c := range counts {
		get(c.Channel).counted = c.Conns > 0
	}
	for ch, m := range r.mine {
		if len(m.ids) == 0 && !m.counted {
			delete(r.mine, ch)
			empty = append(empty, ch)
		}
	}
	r.mu.Unlock()
	if len(empty) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), applyTimeout)
		// Best effort: a channel left in the set costs a survivor one
		// look at a key where this node has nothing.
		_ = r.rdb.SRem(ctx, r.nodeSet(r.node), empty...).Err()
		cancel()
	}
}

// Read implements Store: the channel's hash, summed over nodes.
func (r *Redis) Read(ctx context.Context, channel string) (Snapshot, error) {
	all, err := r.rdb.HGetAll(ctx, r.chanKey(channel)).Result()
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading presence of %s: %w", channel, err)
	}
	s := Snapshot{Channel: channel, Members: []Member{}}
	byID := map[string]int{}
	for f, v := range all {
		if f == "" || f[0] == '#' || f[0] == '!' {
			continue
		}
		bar := strings.IndexByte(f, '|')
		if bar < 0 {
			continue
		}
		id := f[bar+1:]
		if id == "" {
			n, _ := strconv.Atoi(v)
			s.Connections += n
			continue
		}
		vb := strings.IndexByte(v, '|')
		if vb < 0 {
			continue
		}
		n, _ := strconv.Atoi(v[:vb])
		i, ok := byID[id]
		if !ok {
			i = len(s.Members)
			byID[id] = i
			s.Members = append(s.Members, Member{ID: id, Info: []byte(v[vb+1:])})
		}
		s.Members[i].Connections += n
	}
	sortMembers(s.Members)
	return s, nil
}
