package upgrade

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/presence"
	"github.com/cablecar/cablecar/session"
)

// Session restore (SPEC §10): an ext connection's welcome carries a sid,
// a secret the client brings back when it reconnects. Its session — the
// connection id, where the event numbering stands, the subscriptions with
// their streams and states — is kept in the store (session.Store) while
// the connection lives, written when it changes, and after the connection
// ended for session_ttl, its close event held back meanwhile. A client
// that comes back in time gets it all again without a webhook
// (session_accept.go); one that does not, or a session the app or a limit
// ended, has its close event posted as usual.

// restoreHeader is AnyCable's other way to bring a sid back; like the
// query's sid, it never reaches the app.
const restoreHeader = "X-AnyCable-Restore-Sid"

// sidParam is the query parameter @anycable/web sends its sid in.
const sidParam = "sid"

// acSession is an ext connection's session.
type acSession struct {
	sid string // the secret: never logged
	sub string // the JWT's sub at the handshake; "" = none
	// resumeAt is where a restored connection's numbering goes on; 0 for
	// a new one.
	resumeAt uint64
	restored bool
	// stream is the connection's event stream, once run made it: the
	// store's writer reads its numbering.
	stream atomic.Pointer[callback.Stream]
	// superseded: a restore on this node took the session while this
	// connection was still open; it ends without a close of its own.
	superseded atomic.Bool
	// presence is what the connection held when it ended, taken before
	// the hub dropped it (which starts its leave_delay), for the held
	// session; nil while it lives (read live from the hub).
	presence map[string]presence.Member
}

// acNewSession gives a new ext connection its sid and, with restore on,
// its session in the store. It returns the welcome to send.
func (s *Server) acNewSession(c *Conn, p actioncable.Protocol) actioncable.Welcome {
	if p != actioncable.Ext {
		return actioncable.Welcome{}
	}
	sid := session.NewSID()
	if store := s.cfg.ActionCable.Sessions; store != nil {
		c.ac.sess = &acSession{sid: sid, sub: claimSub(c.claims)}
		store.Save(sid, c.acSnapshot)
	}
	return actioncable.Welcome{SID: sid}
}

// acSessionChanged writes the session again after a change of its
// subscriptions, streams or states (batched by the store).
func (c *Conn) acSessionChanged() {
	if c.ac == nil || c.ac.sess == nil {
		return
	}
	c.hub.cfg.ActionCable.Sessions.Save(c.ac.sess.sid, c.acSnapshot)
}

// acSessionStream continues a restored connection's numbering and, with a
// store that outlives the node, saves the session whenever the numbering
// crosses a multiple of session.Reserve, so that a restore after this
// node is killed never reuses an event id.
func (c *Conn) acSessionStream() {
	if c.ac == nil || c.ac.sess == nil {
		return
	}
	ss := c.ac.sess
	if ss.resumeAt > 0 {
		c.stream.Resume(ss.resumeAt)
	}
	ss.stream.Store(c.stream)
	store := c.hub.cfg.ActionCable.Sessions
	if store.Durable() {
		sid := ss.sid
		c.stream.OnEvery(session.Reserve, func(uint64) { store.Save(sid, c.acSnapshot) })
	}
}

// acRestored says the connection is a restored session's: the app saw its
// open long ago.
func (c *Conn) acRestored() bool { return c.ac != nil && c.ac.sess != nil && c.ac.sess.restored }

// acSnapshot is the live session as it is now.
func (c *Conn) acSnapshot() *session.Session {
	ss := c.ac.sess
	seq := ss.resumeAt
	if st := ss.stream.Load(); st != nil {
		seq = st.Seq()
	}
	s := &session.Session{ConnID: c.id, Node: c.hub.node, Sub: ss.sub, Seq: session.Reserved(seq),
		Path: c.eventsPath, Headers: c.eventHeaders, Claims: c.claims, Events: uint8(c.events),
		NoClose: !c.events.has(eventClose)}
	c.mu.Lock()
	s.State = c.state
	c.mu.Unlock()
	ac := c.ac
	ac.mu.RLock()
	for _, sub := range ac.subs {
		s.Subs = append(s.Subs, session.Sub{ID: sub.id.Value(), Streams: atomStrings(sub.streams), State: sub.state, HasState: sub.hasState})
	}
	s.Plain = atomStrings(ac.plain)
	ac.mu.RUnlock()
	slices.Sort(s.Plain)
	if s.Presence = ss.presence; s.Presence == nil {
		s.Presence = c.hub.PresenceOf(c.id)
	}
	return s
}

// acKeepPresence notes what an ext connection holds, before the hub drops
// it, so that its held session can give it back on restore.
func (c *Conn) acKeepPresence() {
	if c.ac != nil && c.ac.sess != nil {
		c.ac.sess.presence = c.hub.PresenceOf(c.id)
	}
}

// restorable says whether a connection that ended for by can still be
// restored: not when the app ended it, nor a limit or a bad token, and
// not on shutdown when sessions die with this process.
func (h *Hub) restorable(by string) bool {
	switch by {
	case ByClient, ByTimeout, BySlow, ByError, ByNodeLost:
		return true
	case ByShutdown:
		return h.cfg.ActionCable.Sessions.Durable()
	}
	return false
}

// acKeepsSession says whether a close for by leaves a session to restore:
// the client then gets no disconnect frame (SPEC §9).
func (c *Conn) acKeepsSession(by string) bool {
	return c.ac.sess != nil && c.hub.restorable(by)
}

// acHold holds the close of a connection whose session can still be
// restored, and reports whether it did; otherwise the session is dropped
// (or, fenced, left for the node that posts this node's closes) and the
// caller goes on as without one.
func (c *Conn) acHold(end closing, code int, fenced bool) bool {
	if c.ac == nil || c.ac.sess == nil {
		return false
	}
	ss := c.ac.sess
	store := c.hub.cfg.ActionCable.Sessions
	if ss.superseded.Load() {
		// Its session goes on in the connection that restored it here,
		// under the same id: nothing of this one is to be told. (The
		// sid was taken: Drop only forgets this node's note of it.)
		store.Drop(ss.sid)
		c.stream.End(nil)
		return true
	}
	if fenced {
		// The session stays as it was written: the node that posts this
		// node's closes holds it (session.Redis.Lost).
		return false
	}
	if !c.hub.restorable(end.by) {
		store.Drop(ss.sid)
		return false
	}
	// What was pushed before goes on to the app; nothing more is numbered.
	c.stream.End(nil)
	n := c.stream.Seq()
	snap := c.acSnapshot()
	snap.Seq = n
	snap.Close = &session.Close{N: n + 1, Code: code, Reason: end.reason, By: end.by,
		Due: time.Now().Add(c.hub.cfg.ActionCable.SessionTTL).UnixMilli()}
	var written func()
	if t := c.hub.cfg.Tracker; t != nil {
		// Once the hold is in Redis, the session's record is where any
		// node posts this close from; the connection's record can go.
		id := c.id
		written = func() { t.Untrack(id) }
	}
	store.Hold(ss.sid, func() *session.Session { return snap }, written)
	c.hub.ac.metrics.sessions.WithLabelValues("held").Inc()
	return true
}

// acAbandoned forgets the session of a new connection whose 101 was
// never written: no client holds its sid. (A restored one's is given
// back by the restore itself.)
func (c *Conn) acAbandoned() {
	if c.ac != nil && c.ac.sess != nil && !c.ac.sess.restored {
		c.hub.cfg.ActionCable.Sessions.Drop(c.ac.sess.sid)
	}
}

// claimSub is the claims' sub as a string (a number too: Rails' user.id).
func claimSub(claims json.RawMessage) string {
	if len(claims) == 0 {
		return ""
	}
	var c struct {
		Sub json.RawMessage `json:"sub"`
	}
	if json.Unmarshal(claims, &c) != nil || len(c.Sub) == 0 {
		return ""
	}
	var str string
	if json.Unmarshal(c.Sub, &str) == nil {
		return str
	}
	return string(bytes.TrimSpace(c.Sub))
}

// stripSID removes the sid query parameter from a request URI.
func stripSID(uri string) string {
	path, query, ok := strings.Cut(uri, "?")
	if !ok || !strings.Contains(query, sidParam) {
		return uri
	}
	if query = auth.StripQueryParam(query, sidParam); query == "" {
		return path
	}
	return path + "?" + query
}
