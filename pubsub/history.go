package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// History (SPEC §10): a broker configured with HistoryConfig keeps the
// last Size messages of each channel it records for TTL, and numbers
// them. A recorded message is delivered with its Epoch and Offset; the
// offset counts up per channel, and the epoch changes whenever what was
// recorded under the old one was lost (a Redis flush, an expired channel,
// a restart of the memory broker), so that a client holding an old
// position learns that it cannot resume rather than resuming across a gap.
//
// Both brokers record and deliver a message in one step: no node is ever
// handed an offset its history lacks, and every recorded message reaches
// the nodes subscribed when it was recorded. That is what lets a client
// resume without a gap or a duplicate: subscribe first, hold what arrives,
// read the history, then drop what arrives with an offset the read
// already returned (the hub does that, see upgrade/history.go).

// HistoryConfig is the history section of the config.
type HistoryConfig struct {
	Size int           // messages kept per channel; 0 keeps none
	TTL  time.Duration // how long a recorded message is kept
	// Channels limits history to these names; a trailing * matches any
	// suffix. Empty: every channel.
	Channels []string
}

// Records reports whether messages to channel are recorded.
func (c *HistoryConfig) Records(channel string) bool {
	if c == nil || c.Size <= 0 {
		return false
	}
	if len(c.Channels) == 0 {
		return true
	}
	for _, p := range c.Channels {
		if prefix, wild := strings.CutSuffix(p, "*"); wild {
			if strings.HasPrefix(channel, prefix) {
				return true
			}
		} else if p == channel {
			return true
		}
	}
	return false
}

// Position is where a recorded message sits in its channel's history.
// The zero Position is "not recorded".
type Position struct {
	Epoch  string
	Offset uint64
}

// PositionOf is m's position; zero when m was not recorded.
func PositionOf(m *Message) Position { return Position{Epoch: m.Epoch, Offset: m.Offset} }

// IsZero reports whether p is "not recorded".
func (p Position) IsZero() bool { return p.Epoch == "" }

// String is p as clients see it: "<epoch>:<offset>".
func (p Position) String() string {
	return p.Epoch + ":" + strconv.FormatUint(p.Offset, 10)
}

// MaxEpochLen is the longest epoch, in bytes.
const MaxEpochLen = 32

// ValidEpoch reports whether e is 1–32 characters of A–Z a–z 0–9 _ -.
func ValidEpoch(e string) bool {
	if e == "" || len(e) > MaxEpochLen {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ParsePosition reads "<epoch>:<offset>".
func ParsePosition(s string) (Position, error) {
	e, o, ok := strings.Cut(s, ":")
	if !ok || !ValidEpoch(e) {
		return Position{}, fmt.Errorf("position %.48q is not <epoch>:<offset> with an epoch of 1–32 letters, digits, _ or -", s)
	}
	n, err := strconv.ParseUint(o, 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("position %.48q: the offset is not a whole number", s)
	}
	return Position{Epoch: e, Offset: n}, nil
}

// Replay is what a read of a channel's history found.
type Replay struct {
	// Messages are the recorded messages asked for, oldest first, each
	// with its Channel, Epoch and Offset set.
	Messages []Message
	// Complete reports that the history reached back: nothing recorded
	// after the position (or since the time) is missing from Messages.
	// When it is false, Messages is empty: a partial replay would look
	// like a complete one to a client that cannot tell.
	Complete bool
}

// History reads what a broker recorded. HistoryOf gives a broker's.
type History interface {
	// Records reports whether channel keeps history.
	Records(channel string) bool
	// After returns what was recorded on channel after pos. An epoch that
	// is not the channel's current one, or an offset the channel has
	// trimmed or not reached yet, is an incomplete replay.
	After(ctx context.Context, channel string, pos Position) (Replay, error)
	// Since returns what was recorded on channel at or after t.
	Since(ctx context.Context, channel string, t time.Time) (Replay, error)
}

// historian is a broker that may keep history.
type historian interface {
	history() History
}

// HistoryOf returns b's history, or nil when b keeps none (history.size
// 0, or a broker that cannot). It sees through Metered.
func HistoryOf(b Broker) History {
	if m, ok := b.(*metered); ok {
		b = m.Broker
	}
	if h, ok := b.(historian); ok {
		return h.history()
	}
	return nil
}

// ErrNoHistory is returned by a read of a channel that keeps no history.
var ErrNoHistory = errors.New("pubsub: this channel keeps no history")

// completeAfter applies the rules of an After read to what a store holds
// for the channel: its epoch, the last offset it gave, and the retained
// messages after pos (oldest first, those past the TTL already dropped).
func completeAfter(pos Position, epoch string, last uint64, msgs []Message) Replay {
	if epoch == "" || pos.Epoch != epoch || pos.Offset > last {
		return Replay{}
	}
	if len(msgs) == 0 {
		// Nothing retained after pos: complete only if nothing came after.
		if pos.Offset == last {
			return Replay{Complete: true}
		}
		return Replay{}
	}
	if msgs[0].Offset != pos.Offset+1 {
		return Replay{}
	}
	return Replay{Messages: msgs, Complete: true}
}

// completeSince applies the rules of a Since read: msgs are the retained
// messages recorded at or after the time, oldest first; before is
// whether the store still holds (or never had) the one just before the
// first of them, or, with none, whether nothing recorded at or after the
// time can have been dropped.
func completeSince(msgs []Message, before bool) Replay {
	if !before {
		return Replay{}
	}
	return Replay{Messages: msgs, Complete: true}
}
