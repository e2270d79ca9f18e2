package presence

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cablecar/cablecar/internal/jsontext"
)

// Scripts of the outbox and of reaping, on one channel's key.
var (
	// ARGV: id, event id → 1 when the event is the first of the id's
	// pending ones (or no longer listed: Redis lost it), 0 while an
	// earlier one waits.
	readyScript = redis.NewScript(`
local q = redis.call('HGET', KEYS[1], '!q|' .. ARGV[1])
if not q then return 1 end
local first = nil
local found = false
for w in string.gmatch(q, '%S+') do
  if not first then first = w end
  if w == ARGV[2] then found = true end
end
if not found or first == ARGV[2] then return 1 end
return 0`)
	// ARGV: id, event id: the app took it.
	doneScript = redis.NewScript(`
redis.call('HDEL', KEYS[1], '!o|' .. ARGV[2])
local q = redis.call('HGET', KEYS[1], '!q|' .. ARGV[1])
if not q then return 0 end
local rest = {}
for w in string.gmatch(q, '%S+') do
  if w ~= ARGV[2] then table.insert(rest, w) end
end
if #rest == 0 then redis.call('HDEL', KEYS[1], '!q|' .. ARGV[1])
else redis.call('HSET', KEYS[1], '!q|' .. ARGV[1], table.concat(rest, ' ')) end
return 1`)
	// ARGV: the lost node, me, outbox, an event id base, at (unix ms),
	// the channel as a JSON string. Deletes the lost node's fields; the ids
	// no one else holds leave. Returns, flat: 'L', id, info, event id for
	// each leave; 'O', event JSON for each of the lost node's pending
	// events, now mine.
	reapScript = redis.NewScript(`
local dead = ARGV[1] .. '|'
local out = {}
local k = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #dead) == dead then
    local id = string.sub(f, #dead + 1)
    local v = redis.call('HGET', KEYS[1], f)
    redis.call('HDEL', KEYS[1], f)
    if id ~= '' and redis.call('HINCRBY', KEYS[1], '#|' .. id, -1) <= 0 then
      redis.call('HDEL', KEYS[1], '#|' .. id)
      local info = string.sub(v, string.find(v, '|', 1, true) + 1)
      k = k + 1
      local evid = ARGV[4] .. '.' .. k
      if ARGV[3] == '1' then
        redis.call('HSET', KEYS[1], '!o|' .. evid, ARGV[2] .. '|{"id":"' .. evid .. '","type":"leave","channel":' .. ARGV[6] ..
          ',"presence_id":' .. cjson.encode(id) .. ',"at":' .. ARGV[5] .. ',"info":' .. info .. '}')
        local q = redis.call('HGET', KEYS[1], '!q|' .. id)
        if q then q = q .. ' ' .. evid else q = evid end
        redis.call('HSET', KEYS[1], '!q|' .. id, q)
      end
      table.insert(out, 'L'); table.insert(out, id); table.insert(out, info); table.insert(out, evid)
    end
  elseif string.sub(f, 1, 3) == '!o|' then
    local v = redis.call('HGET', KEYS[1], f)
    if string.sub(v, 1, #dead) == dead then
      local ev = string.sub(v, #dead + 1)
      redis.call('HSET', KEYS[1], f, ARGV[2] .. '|' .. ev)
      table.insert(out, 'O'); table.insert(out, ev)
    end
  end
end
return out`)

	allScripts = []*redis.Script{setScript, delScript, readyScript, doneScript, reapScript}
)

// Ready implements Outbox.
func (r *Redis) Ready(ctx context.Context, ev Event) (bool, error) {
	n, err := readyScript.Run(ctx, r.rdb, []string{r.chanKey(ev.Channel)}, ev.Who, ev.ID).Int64()
	return n == 1, err
}

// Done implements Outbox.
func (r *Redis) Done(ctx context.Context, ev Event) error {
	return doneScript.Run(ctx, r.rdb, []string{r.chanKey(ev.Channel)}, ev.Who, ev.ID).Err()
}

// Run keeps this node listed, writes its presence again when Redis lost
// it, and reaps the nodes whose lease lapsed, every lease_ttl/3 or so,
// until ctx ends. onLost and posted: see the fields.
func (r *Redis) Run(ctx context.Context, onLost func(), posted func([]Event)) {
	r.onLost, r.posted = onLost, posted
	var healthySince time.Time
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := r.jitter()
		if len(r.lapsed) > 0 {
			// A lapsed node is due leave_delay after it was seen: look
			// then, not a round later.
			next = min(next, max(r.delay/4, 50*time.Millisecond))
		}
		t.Reset(next)
		own, err := r.look(ctx)
		switch {
		case err != nil:
			healthySince = time.Time{}
			if ctx.Err() == nil {
				r.log.Debug().Err(err).Msg("presence: looking at Redis failed; trying again")
			}
			continue
		case !own:
			healthySince = time.Time{}
			continue
		case healthySince.IsZero():
			healthySince = time.Now()
		}
		// As the registry does: a lease that lapsed while Redis was away
		// from everyone says nothing about its node.
		if time.Since(healthySince) < r.ttl {
			continue
		}
		if err := r.reapRound(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn().Err(err).Msg("presence: reaping lost nodes' presence failed; trying again next round")
		}
	}
}

func (r *Redis) jitter() time.Duration {
	base := r.ttl / 3
	return base*4/5 + rand.N(base*2/5+1)
}

// look lists this node, writes its presence again if Redis lost it, and
// says whether its lease is there.
func (r *Redis) look(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.ttl/3)
	defer cancel()
	pipe := r.rdb.Pipeline()
	pipe.SAdd(ctx, r.nodesKey(), r.node)
	set := pipe.Exists(ctx, r.nodeSet(r.node))
	lease := pipe.Exists(ctx, r.leaseKey(r.node))
	if _, err := pipe.Exec(ctx); err != nil {
		return false, err
	}
	r.mu.Lock()
	has := len(r.mine) > 0
	r.mu.Unlock()
	if has && set.Val() == 0 && r.onLost != nil {
		r.log.Warn().Msg("presence: this node's presence is gone from Redis (it restarted or failed over): writing it again, with no joins or leaves")
		r.onLost()
	}
	return lease.Val() == 1, nil
}

// reapRound takes the presence of every node whose lease lapsed out.
func (r *Redis) reapRound(ctx context.Context) error {
	nodes, err := r.rdb.SMembers(ctx, r.nodesKey()).Result()
	if err != nil {
		return err
	}
	pipe := r.rdb.Pipeline()
	leases := make([]*redis.IntCmd, len(nodes))
	for i, n := range nodes {
		if n != r.node {
			leases[i] = pipe.Exists(ctx, r.leaseKey(n))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	now := time.Now()
	for i, n := range nodes {
		if leases[i] == nil || leases[i].Val() != 0 {
			delete(r.lapsed, n)
			continue
		}
		since, ok := r.lapsed[n]
		if !ok {
			r.lapsed[n] = now
			since = now
		}
		if now.Sub(since) < r.delay {
			continue
		}
		won, err := r.rdb.SetNX(ctx, r.reaperKey(n), r.node, r.ttl).Result()
		if err != nil {
			return err
		}
		if !won {
			continue // another survivor has it
		}
		err = r.reapNode(ctx, n)
		r.rdb.Del(context.WithoutCancel(ctx), r.reaperKey(n))
		if err != nil {
			return err
		}
		delete(r.lapsed, n)
	}
	return nil
}

// reapNode deletes a lost node's presence, channel by channel, and hands
// the leaves it made, and its events still due to the app, to posted.
func (r *Redis) reapNode(ctx context.Context, node string) error {
	chans, err := r.rdb.SMembers(ctx, r.nodeSet(node)).Result()
	if err != nil {
		return err
	}
	if err := r.ensureScripts(ctx); err != nil {
		return err
	}
	left := 0
	for _, ch := range chans {
		if back, err := r.rdb.Exists(ctx, r.leaseKey(node)).Result(); err != nil || back == 1 {
			return err // the lease is back: not lost after all
		}
		if r.outbox {
			// The events taken over must stay findable should this node
			// die in turn.
			if err := r.rdb.SAdd(ctx, r.nodeSet(r.node), ch).Err(); err != nil {
				return err
			}
		}
		at := time.Now().UnixMilli()
		res, err := reapScript.Run(ctx, r.rdb, []string{r.chanKey(ch)}, node, r.node, b01(r.outbox),
			NewEventID(), at, string(jsontext.AppendString(nil, ch))).StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		var evs []Event
		for i := 0; i < len(res); {
			switch res[i] {
			case "L":
				evs = append(evs, Event{ID: res[i+3], Type: Leave, Channel: ch, Who: res[i+1], Info: []byte(res[i+2]), At: at})
				i += 4
			case "O":
				var ev Event
				if json.Unmarshal([]byte(res[i+1]), &ev) == nil {
					ev.Taken = true
					evs = append(evs, ev)
				}
				i += 2
			default:
				i = len(res)
			}
		}
		for _, ev := range evs {
			if !ev.Taken {
				left++
			}
		}
		if len(evs) > 0 && r.posted != nil {
			r.posted(evs)
		}
		if err := r.rdb.SRem(ctx, r.nodeSet(node), ch).Err(); err != nil {
			return err
		}
	}
	if err := r.rdb.Del(ctx, r.nodeSet(node)).Err(); err != nil {
		return err
	}
	if err := r.rdb.SRem(ctx, r.nodesKey(), node).Err(); err != nil {
		return err
	}
	// A warning only when someone left: a lost node that held only
	// connection counts (no presence ids) is the registry's news, not ours.
	ev := r.log.Info()
	if left > 0 {
		ev = r.log.Warn()
	}
	ev.Str("lost_node", node).Int("left", left).Int("channels", len(chans)).
		Msg("presence: a node's lease lapsed: its presence ids that no other node holds left")
	return nil
}
