// Package session keeps the sessions of ActionCable ext connections
// (SPEC §10, session restore): what a client that comes back with its sid
// within actioncable.session_ttl gets again without a webhook — its
// connection id, where its event numbering stands, its subscriptions,
// streams and states — and the close event that waits, meanwhile, for the
// session to be restored or to lapse.
//
// Two stores: Memory on one node (nothing outlives the process, so a
// shutdown holds no close), and Redis, where any node can restore a
// session and any node posts a held close when it is due, the lost node's
// included.
//
// The sid is a secret: the stores keep only its SHA-256 (Hash), never the
// sid, and nothing here logs either.
package session

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/cablecar/cablecar/presence"
)

// Session is what a restore gives back. Its JSON is the stored form.
type Session struct {
	ConnID string `json:"id"`
	Node   string `json:"node"`          // the node holding the connection (or that last held it)
	Sub    string `json:"sub,omitempty"` // the JWT's sub; a restore must bring the same
	// Seq is the last event number handed out: exact once the connection
	// ended, else a number no event of the connection reached yet (a node
	// killed numbered below it; see Reserve).
	Seq     uint64          `json:"seq"`
	Path    string          `json:"path"`
	Headers [][2]string     `json:"headers,omitempty"`
	State   string          `json:"state,omitempty"`
	Claims  json.RawMessage `json:"claims,omitempty"`
	Events  uint8           `json:"events"` // upgrade's event set
	NoClose bool            `json:"noclose,omitempty"`
	Subs    []Sub           `json:"subs,omitempty"` // in the order subscribed
	Plain   []string        `json:"plain,omitempty"`
	// Presence is what the connection held (channel → id and info), given
	// back on restore (SPEC §10/§11: Cablecar re-joins, the client's
	// re-sent join is then a no-op).
	Presence map[string]presence.Member `json:"presence,omitempty"`
	// Close is the close event waiting for the session to lapse; nil
	// while the connection is open.
	Close *Close `json:"close,omitempty"`
}

// Sub is one ActionCable subscription.
type Sub struct {
	ID       string   `json:"id"`
	Streams  []string `json:"streams,omitempty"`
	State    string   `json:"state,omitempty"`
	HasState bool     `json:"has_state,omitempty"`
}

// Close is a held close event: posted with id "<conn id>:<N>" when due.
type Close struct {
	N      uint64 `json:"n"`
	Code   int    `json:"code"`
	Reason string `json:"reason,omitempty"`
	By     string `json:"by"`
	Due    int64  `json:"due"` // unix milliseconds
}

// Identifiers are the subscriptions' identifiers, in order.
func (s *Session) Identifiers() []string {
	out := make([]string, 0, len(s.Subs))
	for _, sub := range s.Subs {
		out = append(out, sub.ID)
	}
	return out
}

// Channels are the channels the session is in: its streams and plain
// channels, each once.
func (s *Session) Channels() []string {
	seen := map[string]bool{}
	var out []string
	add := func(ch string) {
		if !seen[ch] {
			seen[ch] = true
			out = append(out, ch)
		}
	}
	for _, sub := range s.Subs {
		for _, st := range sub.Streams {
			add(st)
		}
	}
	for _, ch := range s.Plain {
		add(ch)
	}
	return out
}

// Reserve is how far ahead of the event numbering a live session's Seq
// is kept: the connection saves its session again each time its numbering
// crosses a multiple of Reserve, with Seq two multiples ahead, so that a
// restore after its node was killed never reuses an event id the dead
// node handed out, at one write per Reserve events.
const Reserve = 1024

// Reserved is the Seq a live session stores when its last event number is n.
func Reserved(n uint64) uint64 { return (n/Reserve + 2) * Reserve }

// ErrOtherSub: the session exists, but the handshake's JWT sub is not its
// own. The session is left as it was.
var ErrOtherSub = errors.New("session: another sub")

// Snapshot returns the session as it is now. A store calls it when it
// writes, so changes made meanwhile coalesce into one write.
type Snapshot func() *Session

// PostFunc posts a due held close of s (s.Close). settled is called once
// the app took it or it was finally dropped; the store forgets the
// session then.
type PostFunc func(s *Session, settled func())

// Store keeps sessions. Save, Hold and Drop never block on the network.
type Store interface {
	// Save records a live session; snap is called when it is written.
	Save(sid string, snap Snapshot)
	// Hold records that the connection ended and its close (snap's Close)
	// waits until it is due. A session already restored elsewhere holds
	// nothing: its connection goes on there. written, when not nil, is
	// called once the hold (or that it was not needed) is durable.
	Hold(sid string, snap Snapshot, written func())
	// Drop forgets a session that can no longer be restored.
	Drop(sid string)
	// Take restores a session: it returns it and forgets sid, or nil when
	// there is none (never was, lapsed, posted, restored already), or
	// ErrOtherSub.
	Take(ctx context.Context, sid, sub string) (*Session, error)
	// Find returns the session of connection id, detached when its close
	// is held (no node holds the connection), or nil when there is none.
	Find(ctx context.Context, connID string) (s *Session, detached bool, err error)
	// Run posts held closes as they fall due, until ctx ends.
	Run(ctx context.Context, post PostFunc)
	// Flush writes what waits, until ctx ends (shutdown).
	Flush(ctx context.Context) error
	// Durable says whether sessions outlive this process.
	Durable() bool
}

// NewSID returns a new session id: 192 random bits, base64url.
func NewSID() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("cablecar: no randomness: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Hash is what the stores keep of a sid.
func Hash(sid string) string {
	sum := sha256.Sum256([]byte(sid))
	return hex.EncodeToString(sum[:16])
}

func nowMs() int64 { return time.Now().UnixMilli() }
