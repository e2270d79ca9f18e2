package pubsub

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis broker's history (SPEC §10): per channel a stream and a hash,
// both with the verbatim channel's name as hash tag, so that on a Redis
// Cluster they live on the channel's shard with its envelope channel:
//
//	<prefix>~h:{<prefix><channel>}   the stream: one entry per message, ID
//	                                 <offset>-<unix ms>, fields h (the
//	                                 envelope's head) and d (the payload)
//	<prefix>~hm:{<prefix><channel>}  e (the epoch) and o (the last offset)
//
// history.lua records and publishes in one step; a recorded message
// travels in the envelope (kind 'h') with its position, so every node
// learns it. The stream is trimmed to about history.size (reads count
// exactly) and expires history.ttl after the last message; the hash lives
// a day longer, so a client whose position is the last message still
// resumes after a quiet spell. A hash that is gone (flush, failover
// without persistence, a day of silence) makes a new epoch.

//go:embed history.lua
var historyScript string

var historyLua = redis.NewScript(historyScript)

const (
	historyInfix     = "~h:{"
	historyMetaInfix = "~hm:{"
	// epochLinger is how much longer than the messages the epoch and
	// last offset are kept.
	epochLinger = 24 * time.Hour
	// sincePage is how many entries a Since read takes per round trip.
	sincePage = 256
)

type redisHistory struct {
	r    *Redis
	cfg  HistoryConfig
	seed string // the start of a new epoch made by this node
}

func (r *Redis) history() History {
	if r.hist == nil {
		return nil
	}
	return r.hist
}

func newRedisHistory(r *Redis, cfg HistoryConfig) *redisHistory {
	if cfg.Size <= 0 {
		return nil
	}
	return &redisHistory{r: r, cfg: cfg, seed: rand.Text()[:12]}
}

func (h *redisHistory) Records(channel string) bool { return h.cfg.Records(channel) }

func (h *redisHistory) keys(channel string) []string {
	tag := h.r.cfg.Prefix + channel + "}"
	return []string{h.r.cfg.Prefix + historyInfix + tag, h.r.cfg.Prefix + historyMetaInfix + tag}
}

func (h *redisHistory) args(m *Message) []any {
	sharded := "0"
	if h.r.cluster {
		sharded = "1"
	}
	head := appendEnvelope(nil, kindRecorded, m.Binary, m.Except, 0, nil)
	return []any{envelopeName(h.r.cfg.Prefix, m.Channel), head, m.Data, h.cfg.Size,
		h.cfg.TTL.Milliseconds(), (h.cfg.TTL + epochLinger).Milliseconds(), h.seed, sharded}
}

// recorded reports whether m is recorded: a broadcast, not a close, to a
// channel that keeps history.
func (h *redisHistory) recorded(m *Message) bool {
	return h != nil && m.Close == nil && h.cfg.Records(m.Channel)
}

// queue adds the script's call for m to pipe.
func (h *redisHistory) queue(ctx context.Context, pipe redis.Pipeliner, m *Message) *redis.Cmd {
	return historyLua.EvalSha(ctx, pipe, h.keys(m.Channel), h.args(m)...)
}

// finish reads the positions the script gave into msgs. A server that
// did not have the script yet (a restart, a new shard) answered NOSCRIPT
// without running it: those calls are made again with the script's text,
// in their order. (A broadcast without history to the same channel in the
// same batch has then gone out before them: only a close of the channel's
// subscribers can be such a message, and only right after Redis lost its
// scripts.)
func (h *redisHistory) finish(ctx context.Context, msgs []Message, cmds map[int]*redis.Cmd) error {
	var again []int
	for i, c := range cmds {
		if c.Err() != nil && redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		sortInts(again)
		pipe := h.r.rdb.Pipeline()
		for _, i := range again {
			cmds[i] = historyLua.Eval(ctx, pipe, h.keys(msgs[i].Channel), h.args(&msgs[i])...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("publishing to Redis: %w", err)
		}
	}
	for i, c := range cmds {
		if err := c.Err(); err != nil {
			return fmt.Errorf("publishing to Redis: %w", err)
		}
		pos, err := scriptPosition(c.Val())
		if err != nil {
			return err
		}
		msgs[i].Epoch, msgs[i].Offset = pos.Epoch, pos.Offset
	}
	return nil
}

func sortInts(s []int) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func scriptPosition(v any) (Position, error) {
	a, ok := v.([]any)
	if ok && len(a) == 2 {
		e, eok := a[0].(string)
		o, ook := a[1].(int64)
		if eok && ook && ValidEpoch(e) && o > 0 {
			return Position{Epoch: e, Offset: uint64(o)}, nil
		}
	}
	return Position{}, fmt.Errorf("the history script answered %v, not an epoch and an offset", v)
}

// decodeRecorded reads a recorded broadcast's envelope: the position
// line, then the payload.
func decodeRecorded(e envelope) (Message, error) {
	line, payload, ok := bytes.Cut(e.payload, []byte{'\n'})
	if !ok {
		return Message{}, fmt.Errorf("%w: a recorded message without its position", errEnvelope)
	}
	pos, err := ParsePosition(string(line))
	if err != nil || pos.Offset == 0 {
		return Message{}, fmt.Errorf("%w: a recorded message with a bad position", errEnvelope)
	}
	return Message{Data: payload, Binary: e.binary, Except: e.id, Epoch: pos.Epoch, Offset: pos.Offset}, nil
}

// entry is one stream entry as a Message, and when it was recorded.
func (h *redisHistory) entry(channel, epoch string, x redis.XMessage) (Message, time.Time, error) {
	o, ms, ok := strings.Cut(x.ID, "-")
	off, err1 := strconv.ParseUint(o, 10, 64)
	at, err2 := strconv.ParseInt(ms, 10, 64)
	head, _ := x.Values["h"].(string)
	data, _ := x.Values["d"].(string)
	if !ok || err1 != nil || err2 != nil {
		return Message{}, time.Time{}, fmt.Errorf("history entry %q of %q: not <offset>-<ms>", x.ID, channel)
	}
	e, err := decodeEnvelope([]byte(head))
	if err != nil || e.kind != kindRecorded {
		return Message{}, time.Time{}, fmt.Errorf("history entry %q of %q: bad head", x.ID, channel)
	}
	return Message{Channel: channel, Data: []byte(data), Binary: e.binary, Except: e.id, Epoch: epoch, Offset: off},
		time.UnixMilli(at), nil
}

// state is the channel's epoch and last offset, and Redis's clock, read
// in the transaction of a read.
type state struct {
	epoch string
	last  uint64
	now   time.Time
}

func readState(meta *redis.SliceCmd, clock *redis.TimeCmd) (state, error) {
	if err := meta.Err(); err != nil {
		return state{}, err
	}
	if err := clock.Err(); err != nil {
		return state{}, err
	}
	var s state
	s.now = clock.Val()
	v := meta.Val()
	if e, ok := v[0].(string); ok {
		s.epoch = e
	}
	if o, ok := v[1].(string); ok {
		s.last, _ = strconv.ParseUint(o, 10, 64)
	}
	return s, nil
}

// retained drops, from entries read oldest first, those a read must not
// return: older than the TTL, or beyond the last size (the stream is
// trimmed only about size).
func (h *redisHistory) retained(channel string, s state, xs []redis.XMessage) ([]Message, []time.Time, error) {
	cutoff := s.now.Add(-h.cfg.TTL)
	var msgs []Message
	var ats []time.Time
	for _, x := range xs {
		m, at, err := h.entry(channel, s.epoch, x)
		if err != nil {
			return nil, nil, err
		}
		if at.Before(cutoff) || s.last >= uint64(h.cfg.Size) && m.Offset <= s.last-uint64(h.cfg.Size) {
			continue
		}
		msgs, ats = append(msgs, m), append(ats, at)
	}
	return msgs, ats, nil
}

// read takes, in one transaction, the channel's epoch and last offset, the
// entries that xrange reads of its stream, and Redis's clock: all of one
// moment.
func (h *redisHistory) read(ctx context.Context, channel string,
	xrange func(p redis.Pipeliner, stream string) *redis.XMessageSliceCmd) (state, []redis.XMessage, error) {
	keys := h.keys(channel)
	var (
		meta  *redis.SliceCmd
		xs    *redis.XMessageSliceCmd
		clock *redis.TimeCmd
	)
	_, err := h.r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		meta = p.HMGet(ctx, keys[1], "e", "o")
		xs = xrange(p, keys[0])
		clock = p.Time(ctx)
		return nil
	})
	if err != nil {
		return state{}, nil, fmt.Errorf("reading the history of %q: %w", channel, err)
	}
	s, err := readState(meta, clock)
	if err != nil {
		return state{}, nil, fmt.Errorf("reading the history of %q: %w", channel, err)
	}
	return s, xs.Val(), nil
}

func (h *redisHistory) After(ctx context.Context, channel string, pos Position) (Replay, error) {
	if !h.Records(channel) {
		return Replay{}, ErrNoHistory
	}
	s, xs, err := h.read(ctx, channel, func(p redis.Pipeliner, stream string) *redis.XMessageSliceCmd {
		return p.XRange(ctx, stream, strconv.FormatUint(pos.Offset+1, 10)+"-0", "+")
	})
	if err != nil {
		return Replay{}, err
	}
	if s.epoch != pos.Epoch {
		return Replay{}, nil
	}
	msgs, _, err := h.retained(channel, s, xs)
	if err != nil {
		return Replay{}, err
	}
	return completeAfter(pos, s.epoch, s.last, msgs), nil
}

func (h *redisHistory) Since(ctx context.Context, channel string, t time.Time) (Replay, error) {
	if !h.Records(channel) {
		return Replay{}, ErrNoHistory
	}
	s, page, err := h.read(ctx, channel, func(p redis.Pipeliner, stream string) *redis.XMessageSliceCmd {
		return p.XRevRangeN(ctx, stream, "+", "-", sincePage)
	})
	if err != nil {
		return Replay{}, err
	}
	keys := h.keys(channel)
	// Newest first, page after page, until one older than t: later pages
	// must join on without a gap, or entries went meanwhile.
	var newestFirst []redis.XMessage
	for {
		newestFirst = append(newestFirst, page...)
		if len(page) < sincePage || olderThan(page[len(page)-1], t) {
			break
		}
		last := page[len(page)-1].ID
		page, err = h.r.rdb.XRevRangeN(ctx, keys[0], "("+last, "-", sincePage).Result()
		if err != nil {
			return Replay{}, fmt.Errorf("reading the history of %q: %w", channel, err)
		}
		if len(page) > 0 && offsetOf(page[0].ID)+1 != offsetOf(last) {
			return Replay{}, nil
		}
	}
	xsOld := make([]redis.XMessage, len(newestFirst))
	for i, x := range newestFirst {
		xsOld[len(newestFirst)-1-i] = x
	}
	all, ats, err := h.retained(channel, s, xsOld)
	if err != nil {
		return Replay{}, err
	}
	first := 0
	for first < len(all) && ats[first].Before(t) {
		first++
	}
	msgs := all[first:]
	var before bool
	switch {
	case s.epoch == "" || s.last == 0:
		// Nothing kept: nothing recorded, or everything lost with its epoch.
		// A lost epoch cannot be told from none here; positions can (After).
		before = true
	case len(all) == 0:
		// Everything expired: all of it is older than the TTL.
		before = !t.Before(s.now.Add(-h.cfg.TTL))
	case len(msgs) == 0:
		// Nothing since t retained: complete if the newest ever recorded
		// is retained (and so older than t).
		before = all[len(all)-1].Offset == s.last
	default:
		before = msgs[0].Offset == 1 || first > 0
	}
	return completeSince(msgs, before), nil
}

func olderThan(x redis.XMessage, t time.Time) bool {
	_, ms, _ := strings.Cut(x.ID, "-")
	at, err := strconv.ParseInt(ms, 10, 64)
	return err == nil && time.UnixMilli(at).Before(t)
}

func offsetOf(id string) uint64 {
	o, _, _ := strings.Cut(id, "-")
	n, _ := strconv.ParseUint(o, 10, 64)
	return n
}
