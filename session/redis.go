package session

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Redis keeps sessions where every node finds them:
//
//	<prefix>~{sess}:s:<sid hash>  STRING the connection id (the sid's one use)
//	<prefix>~{sess}:d:<conn id>   HASH   sid: the hash, sub, data: JSON Session, held: 1, posting: 1,
//	                                     node: the node that restored it last
//	<prefix>~{sess}:held          ZSET   conn id → when its close is due (unix ms)
//
// One hash tag, one Cluster slot: the scripts touch a session's keys and
// the held set atomically. The s: key is the session's lock — a restore
// and the poster of its close each delete it inside a script that first
// checks it, so exactly one of them gets the session.
//
// Writes are batched, coalesced per session: one pipeline as soon as
// something changed but at most every flushGap. Live sessions expire after
// liveTTL and are written again by their node every liveTTL/3, so a killed
// node's sessions stay long enough for its reaper (sidecar/reap.go: Lost)
// to hold their closes, and a forgotten one goes by itself.
type Redis struct {
	rdb  redis.UniversalClient
	ttl  time.Duration
	node string
	log  zerolog.Logger
	pfx  string // <prefix>~{sess}:

	mu      sync.Mutex
	live    map[string]*redisEntry // sid hash → entry, while this node may write it
	dirty   map[string]struct{}
	kick    chan struct{}
	flushMu sync.Mutex
	// flushed is closed, and replaced, after each flush.
	flushed chan struct{}
	// loaded: the scripts a pipeline runs by their SHA are in Redis (a
	// pipeline cannot fall back to EVAL); lost with a restart or a flush.
	loaded atomic.Bool
}

type redisEntry struct {
	snap    Snapshot
	held    bool   // Hold was called: written once more, then forgotten
	drop    bool   // Drop was called
	written bool   // a write may have reached Redis: later ones are conditional
	after   func() // called once the hold is written
}

const (
	flushGap    = 5 * time.Millisecond
	writeBudget = 5 * time.Second
	// postRetry is how long a node that took a due close has to post it
	// before another node takes it again (the first died).
	postRetry = time.Minute
	// heldSlack keeps a held session past its due time, for the poster.
	heldSlack = time.Hour
)

// NewRedis returns a store whose sessions wait ttl after their connection
// ended. Run must run for anything to be written.
func NewRedis(rdb redis.UniversalClient, prefix, node string, ttl time.Duration, log zerolog.Logger) *Redis {
	return &Redis{rdb: rdb, ttl: ttl, node: node, log: log, pfx: prefix + "~{sess}:",
		live: map[string]*redisEntry{}, dirty: map[string]struct{}{}, kick: make(chan struct{}, 1),
		flushed: make(chan struct{})}
}

func (r *Redis) Durable() bool { return true }

func (r *Redis) sKey(h string) string  { return r.pfx + "s:" + h }
func (r *Redis) dKey(id string) string { return r.pfx + "d:" + id }
func (r *Redis) heldKey() string       { return r.pfx + "held" }

// liveTTL is how long a live session's keys last without being written again.
func (r *Redis) liveTTL() time.Duration { return max(2*r.ttl, 30*time.Minute) }

func (r *Redis) mark(h string, f func(e *redisEntry)) {
	r.mu.Lock()
	e := r.live[h]
	if e == nil {
		e = &redisEntry{}
		r.live[h] = e
	}
	f(e)
	r.dirty[h] = struct{}{}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *Redis) Save(sid string, snap Snapshot) {
	r.mark(Hash(sid), func(e *redisEntry) { e.snap = snap })
}

func (r *Redis) Hold(sid string, snap Snapshot, written func()) {
	r.mark(Hash(sid), func(e *redisEntry) { e.snap, e.held, e.after = snap, true, written })
}

func (r *Redis) Drop(sid string) {
	r.mark(Hash(sid), func(e *redisEntry) { e.drop = true })
}

// saveScript writes a session. KEYS: s, d, held. ARGV: conn id, sid hash,
// sub, data, px, conditional ("1": only while s still names this
// connection — else it was restored or posted meanwhile), due ("" = live).
var saveScript = redis.NewScript(`
if ARGV[6] == "1" and redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[5])
redis.call("HSET", KEYS[2], "sid", ARGV[2], "sub", ARGV[3], "data", ARGV[4])
redis.call("HDEL", KEYS[2], "posting")
redis.call("PEXPIRE", KEYS[2], ARGV[5])
if ARGV[7] ~= "" then
  redis.call("HSET", KEYS[2], "held", "1")
  redis.call("ZADD", KEYS[3], ARGV[7], ARGV[1])
else
  redis.call("HDEL", KEYS[2], "held")
end
return 1`)

// dropScript forgets a session still this sid's. KEYS: s, d. ARGV: conn id, sid hash.
var dropScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("DEL", KEYS[1])
if redis.call("HGET", KEYS[2], "sid") == ARGV[2] then redis.call("DEL", KEYS[2]) end
return 1`)

// takeScript restores. KEYS: s, d, held. ARGV: conn id, sid hash, sub, px,
// the restoring node (Find says it holds the connection from now on, not
// only once its first write lands). Returns the data, or 0 (none), or -1
// (another sub).
var takeScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
local d = redis.call("HMGET", KEYS[2], "sid", "sub", "data", "posting")
if d[1] ~= ARGV[2] or d[4] or not d[3] then return 0 end
if (d[2] or "") ~= ARGV[3] then return -1 end
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[3], ARGV[1])
redis.call("HDEL", KEYS[2], "held")
redis.call("HSET", KEYS[2], "node", ARGV[5])
redis.call("PEXPIRE", KEYS[2], ARGV[4])
return d[3]`)

// claimScript takes a due close for posting. KEYS: held, d, s. ARGV: conn
// id, now, retry at, sid hash. Returns the data or 0.
var claimScript = redis.NewScript(`
local due = redis.call("ZSCORE", KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
local d = redis.call("HMGET", KEYS[2], "sid", "data", "posting")
if not d[2] then redis.call("ZREM", KEYS[1], ARGV[1]) return 0 end
if not d[3] then
  if d[1] ~= ARGV[4] or redis.call("GET", KEYS[3]) ~= ARGV[1] then redis.call("ZREM", KEYS[1], ARGV[1]) return 0 end
  redis.call("DEL", KEYS[3])
  redis.call("HSET", KEYS[2], "posting", "1")
end
redis.call("ZADD", KEYS[1], ARGV[3], ARGV[1])
return d[2]`)

// settleScript forgets a posted close. KEYS: held, d. ARGV: conn id.
var settleScript = redis.NewScript(`
redis.call("ZREM", KEYS[1], ARGV[1])
if redis.call("HGET", KEYS[2], "posting") == "1" then redis.call("DEL", KEYS[2]) end
return 1`)

// lostScript holds the close of a lost node's connection. KEYS: d, held,
// s. ARGV: conn id, node, data, due, px. Returns 1 held (or held
// already), 2 the session goes on elsewhere, 0 no session.
var lostScript = redis.NewScript(`
local d = redis.call("HMGET", KEYS[1], "sid", "data", "held", "posting")
if not d[2] then return 0 end
if d[3] or d[4] then return 1 end
local s = cjson.decode(d[2])
if s.node ~= ARGV[2] or redis.call("GET", KEYS[3]) ~= ARGV[1] then return 2 end
redis.call("HSET", KEYS[1], "data", ARGV[3], "held", "1")
redis.call("ZADD", KEYS[2], ARGV[4], ARGV[1])
redis.call("PEXPIRE", KEYS[1], ARGV[5])
redis.call("PEXPIRE", KEYS[3], ARGV[5])
return 1`)

// Run writes what changed, rewrites live sessions every liveTTL/3, and
// posts held closes as they fall due, until ctx ends.
func (r *Redis) Run(ctx context.Context, post PostFunc) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.pollLoop(ctx, post)
	}()
	refresh := time.NewTicker(r.liveTTL() / 3)
	defer refresh.Stop()
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-refresh.C:
			r.mu.Lock()
			for h, e := range r.live {
				if !e.held && !e.drop {
					r.dirty[h] = struct{}{}
				}
			}
			r.mu.Unlock()
		case <-r.kick:
		}
		if err := r.flush(ctx); err != nil {
			if ctx.Err() == nil {
				r.log.Warn().Err(err).Msg("sessions: writing to Redis failed; retrying")
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			select {
			case r.kick <- struct{}{}:
			default:
			}
			continue
		}
		backoff = 50 * time.Millisecond
		select {
		case <-ctx.Done():
		case <-time.After(flushGap):
		}
	}
}

type sessOp struct {
	h     string
	e     *redisEntry
	s     *Session
	cmd   *redis.Cmd
	after func()
	// The entry as it was when the flush took it, read under mu: Save,
	// Hold and Drop change it meanwhile.
	snap                Snapshot
	held, drop, written bool
}

// flush writes every dirty session in one pipeline.
func (r *Redis) flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	ops := make([]sessOp, 0, len(r.dirty))
	for h := range r.dirty {
		e := r.live[h]
		if e == nil || e.snap == nil {
			delete(r.live, h)
			continue
		}
		ops = append(ops, sessOp{h: h, e: e, after: e.after, snap: e.snap, held: e.held, drop: e.drop, written: e.written})
	}
	clear(r.dirty)
	r.mu.Unlock()
	if len(ops) == 0 {
		r.signal()
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, writeBudget)
	defer cancel()
	if !r.loaded.Load() {
		for _, sc := range []*redis.Script{saveScript, dropScript} {
			if err := sc.Load(wctx, r.rdb).Err(); err != nil {
				r.requeue(ops)
				return err
			}
		}
		r.loaded.Store(true)
	}
	pipe := r.rdb.Pipeline()
	for i := range ops {
		op := &ops[i]
		op.s = op.snap()
		k := []string{r.sKey(op.h), r.dKey(op.s.ConnID), r.heldKey()}
		if op.drop {
			op.cmd = dropScript.Run(wctx, pipe, k[:2], op.s.ConnID, op.h)
			continue
		}
		data, err := json.Marshal(op.s)
		if err != nil {
			return err
		}
		px, due, cond := r.liveTTL(), "", "0"
		if op.written {
			cond = "1"
		}
		if op.held && op.s.Close != nil {
			px = time.Duration(op.s.Close.Due-nowMs())*time.Millisecond + heldSlack
			due = strconv.FormatInt(op.s.Close.Due, 10)
		}
		op.cmd = saveScript.Run(wctx, pipe, k, op.s.ConnID, op.h, op.s.Sub, data, px.Milliseconds(), cond, due)
	}
	_, err := pipe.Exec(wctx)
	if err != nil && strings.Contains(err.Error(), "NOSCRIPT") {
		r.loaded.Store(false)
	}
	r.mu.Lock()
	var afters []func()
	for _, op := range ops {
		if op.cmd.Err() != nil {
			// Written again on the next flush; a later write by then is
			// conditional all the same.
			op.e.written = true
			if _, again := r.dirty[op.h]; !again && r.live[op.h] == op.e {
				r.dirty[op.h] = struct{}{}
			}
			continue
		}
		op.e.written = true
		if op.e.held || op.e.drop {
			if _, again := r.dirty[op.h]; !again {
				delete(r.live, op.h)
			}
			if op.after != nil {
				afters = append(afters, op.after)
				op.e.after = nil
			}
		}
	}
	r.mu.Unlock()
	for _, f := range afters {
		f()
	}
	r.signal()
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	return nil
}

// requeue marks ops dirty again after a flush that sent nothing.
func (r *Redis) requeue(ops []sessOp) {
	r.mu.Lock()
	for _, op := range ops {
		if r.live[op.h] == op.e {
			r.dirty[op.h] = struct{}{}
		}
	}
	r.mu.Unlock()
}

func (r *Redis) signal() {
	r.mu.Lock()
	close(r.flushed)
	r.flushed = make(chan struct{})
	r.mu.Unlock()
}

// Flush writes what waits now; it returns with ctx's error while Redis
// fails.
func (r *Redis) Flush(ctx context.Context) error {
	for {
		err := r.flush(ctx)
		r.mu.Lock()
		n := len(r.dirty)
		r.mu.Unlock()
		if err == nil && n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *Redis) Take(ctx context.Context, sid, sub string) (*Session, error) {
	h := Hash(sid)
	id, err := r.rdb.Get(ctx, r.sKey(h)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	res, err := takeScript.Run(ctx, r.rdb, []string{r.sKey(h), r.dKey(id), r.heldKey()},
		id, h, sub, r.liveTTL().Milliseconds(), r.node).Result()
	if err != nil {
		return nil, err
	}
	switch v := res.(type) {
	case int64:
		if v == -1 {
			return nil, ErrOtherSub
		}
		return nil, nil
	case string:
		var s Session
		if err := json.Unmarshal([]byte(v), &s); err != nil {
			return nil, err
		}
		return &s, nil
	}
	return nil, nil
}

func (r *Redis) Find(ctx context.Context, connID string) (*Session, bool, error) {
	v, err := r.rdb.HMGet(ctx, r.dKey(connID), "data", "held", "posting", "node").Result()
	if err != nil {
		return nil, false, err
	}
	data, ok := v[0].(string)
	if !ok || v[2] != nil {
		return nil, false, nil
	}
	var s Session
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		return nil, false, err
	}
	if node, ok := v[3].(string); ok {
		// Restored there: data may still be the last node's write.
		s.Node = node
	}
	return &s, v[1] != nil, nil
}

// Lost holds the close c of connection id, which lived on the lost node:
// held says it now waits for a restore, gone on that its session goes on
// on another node (nothing is to be posted); neither: it had no session,
// and its close is the caller's to post now.
func (r *Redis) Lost(ctx context.Context, id, node string, c Close) (held, goesOn bool, err error) {
	v, err := r.rdb.HMGet(ctx, r.dKey(id), "sid", "data").Result()
	if err != nil {
		return false, false, err
	}
	h, _ := v[0].(string)
	data, ok := v[1].(string)
	if !ok {
		return false, false, nil
	}
	var s Session
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		return false, false, err
	}
	c.Due = nowMs() + r.ttl.Milliseconds()
	s.Close = &c
	nd, err := json.Marshal(&s)
	if err != nil {
		return false, false, err
	}
	res, err := lostScript.Run(ctx, r.rdb, []string{r.dKey(id), r.heldKey(), r.sKey(h)},
		id, node, nd, c.Due, (r.ttl + heldSlack).Milliseconds()).Int()
	if err != nil {
		return false, false, err
	}
	return res == 1, res == 2, nil
}

// pollLoop posts due closes: a few looks per session_ttl.
func (r *Redis) pollLoop(ctx context.Context, post PostFunc) {
	t := time.NewTicker(pollEvery(r.ttl))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.pollOnce(ctx, post); err != nil && ctx.Err() == nil {
			r.log.Debug().Err(err).Msg("sessions: looking for due closes failed")
		}
	}
}

func (r *Redis) pollOnce(ctx context.Context, post PostFunc) error {
	now := nowMs()
	ids, err := r.rdb.ZRangeByScore(ctx, r.heldKey(), &redis.ZRangeBy{Min: "-inf",
		Max: strconv.FormatInt(now, 10), Count: 500}).Result()
	if err != nil {
		return err
	}
	for _, id := range ids {
		h, err := r.rdb.HGet(ctx, r.dKey(id), "sid").Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		res, err := claimScript.Run(ctx, r.rdb, []string{r.heldKey(), r.dKey(id), r.sKey(h)},
			id, now, now+postRetry.Milliseconds(), h).Result()
		if err != nil {
			return err
		}
		data, ok := res.(string)
		if !ok {
			continue
		}
		var s Session
		if err := json.Unmarshal([]byte(data), &s); err != nil || s.Close == nil {
			r.settle(id)
			continue
		}
		post(&s, func() { r.settle(id) })
	}
	return nil
}

func (r *Redis) settle(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), writeBudget)
	defer cancel()
	if err := settleScript.Run(ctx, r.rdb, []string{r.heldKey(), r.dKey(id)}, id).Err(); err != nil {
		// Taken again after postRetry: the app drops the repeat by its id.
		r.log.Debug().Err(err).Msg("sessions: forgetting a posted close failed")
	}
}

var _ Store = (*Redis)(nil)
