package upgrade

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/session"
)

// acRestore answers a handshake that brings back the sid of a session the
// store still keeps, without asking the app (SPEC §10): it has passed the
// Origin and JWT checks already, and a token with another sub than the
// session's gets a new session (false: the caller goes on to the accept).
// It reports whether it answered the handshake.
func (s *Server) acRestore(ctx *fasthttp.RequestCtx, claims auth.Claims, log *zerolog.Event) bool {
	store := s.cfg.ActionCable.Sessions
	if store == nil {
		return false
	}
	sid := restoreSID(ctx)
	if sid == "" || !offersProtocol(&ctx.Request.Header, actioncable.ExtName) {
		return false
	}
	tctx, cancel := context.WithTimeout(context.Background(), s.cfg.BrokerTimeout)
	sess, err := store.Take(tctx, sid, claimSub(claims.JSON))
	cancel()
	switch {
	case errors.Is(err, session.ErrOtherSub):
		s.hub.ac.metrics.sessions.WithLabelValues("other_sub").Inc()
		return false
	case err != nil:
		s.log.Warn().Err(err).Msg("session restore: the store failed; accepting as a new session")
		return false
	case sess == nil:
		s.hub.ac.metrics.sessions.WithLabelValues("not_found").Inc()
		return false
	}

	seq := sess.Seq
	if n, ok := s.supersede(sess.ConnID); ok {
		seq = n
	}

	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	h := &req.Header
	s.prepare(ctx, h)
	c := &Conn{
		hub:          s.hub,
		id:           sess.ConnID,
		log:          connLog{l: &s.log, id: sess.ConnID},
		events:       eventSet(sess.Events),
		eventsPath:   sess.Path,
		eventHeaders: s.eventHeaders(h),
		state:        sess.State,
		createdAt:    time.Now().UnixNano(),
		claims:       claims.JSON,
	}
	if c.claims == nil {
		c.claims = sess.Claims
	}
	if !claims.Expires.IsZero() {
		c.expires = claims.Expires.Add(s.cfg.JWTLeeway).UnixNano()
	}
	c.ac = newACConn(actioncable.Ext)
	ac := c.ac
	for _, sub := range sess.Subs {
		if ac.sub(intern(sub.ID)) != nil {
			continue
		}
		as := &acSub{id: intern(sub.ID), state: sub.State, hasState: sub.HasState}
		for _, st := range sub.Streams {
			if n := intern(st); !slices.Contains(as.streams, n) {
				as.streams = append(as.streams, n)
			}
		}
		ac.subs = append(ac.subs, as)
	}
	for _, ch := range sess.Plain {
		if n := intern(ch); !slices.Contains(ac.plain, n) {
			ac.plain = append(ac.plain, n)
		}
	}
	newSID := session.NewSID()
	ac.sess = &acSession{sid: newSID, sub: sess.Sub, resumeAt: seq, restored: true}
	// Saved before the welcome can reach the client: the new sid must
	// restore something should this connection end at once.
	store.Save(newSID, c.acSnapshot)
	c.acSend(actioncable.AppendWelcome(nil, actioncable.Welcome{SID: newSID, Restored: true, RestoredIDs: sess.Identifiers()}))

	giveBack := func() {
		// Not restored after all: the session's close is owed, as it
		// would have been had the client not come back.
		cl := sess.Close
		if cl == nil {
			cl = &session.Close{N: session.Reserved(seq), Code: closeNoFrame, By: ByClient}
		}
		cl.Due = time.Now().UnixMilli()
		back := *sess
		back.Close = cl
		store.Hold(newSID, func() *session.Session { return &back }, nil)
	}
	if !s.hub.add(c) {
		giveBack()
		s.refuse(ctx, fasthttp.StatusServiceUnavailable, "shutting_down",
			"503 Service Unavailable: this server is shutting down; reconnect", log)
		return true
	}
	if err := c.subscribe(sess.Channels()...); err != nil {
		c.abandon()
		giveBack()
		s.refuse(ctx, fasthttp.StatusServiceUnavailable, "broker",
			"503 Service Unavailable: broadcasts are unavailable; try again", log.Err(err))
		return true
	}
	// Its presences come back with it, before the old connection's drop
	// has waited leave_delay: the id never leaves (SPEC §10, §11).
	s.hub.PresenceRejoin(c.id, sess.Presence)
	ctx.Response.Header.Set("Sec-WebSocket-Protocol", actioncable.ExtName)
	if err := s.upgrader.Upgrade(ctx, c.run); err != nil {
		c.abandon()
		giveBack()
		s.log.Error().Err(err).Str("conn_id", c.id).Msg("upgrading a restored session failed")
		return true
	}
	s.hub.ac.metrics.sessions.WithLabelValues("restored").Inc()
	s.metrics.upgrades.WithLabelValues("accepted", "restored").Inc()
	log.Str("conn_id", c.id).Int("subscriptions", len(sess.Subs)).Msg("websocket session restored")
	return true
}

// supersede ends the connection of a session restored while this node
// still holds it (its client came back before the old socket was seen to
// end): cut, with no close of its own, since the session goes on. Once it
// is torn down, its numbering is final and the restored connection goes
// on from there (ok); should that take long, the stored Seq, which is
// ahead of anything the old one numbered, is used.
func (s *Server) supersede(id string) (uint64, bool) {
	old := s.hub.get(id)
	if old == nil || old.ac == nil || old.ac.sess == nil {
		return 0, false
	}
	old.ac.sess.superseded.Store(true)
	old.decide(closing{code: closeNoFrame, reason: "session restored", by: ByClient})
	old.cut()
	deadline := time.Now().Add(supersedeWait)
	for s.hub.get(id) == old && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := old.ac.sess.stream.Load()
	if s.hub.get(id) == old || st == nil {
		return 0, false
	}
	return st.Seq(), true
}

// supersedeWait bounds how long a restore waits for the connection it
// supersedes to be torn down.
const supersedeWait = time.Second

// restoreSID is the sid a handshake brings back: the query's, else
// AnyCable's header; "" (an empty one included) is none.
func restoreSID(ctx *fasthttp.RequestCtx) string {
	if v := ctx.QueryArgs().Peek(sidParam); len(v) > 0 {
		return string(v)
	}
	return strings.TrimSpace(string(ctx.Request.Header.Peek(restoreHeader)))
}

// offersProtocol says whether the client offered subprotocol p.
func offersProtocol(h *fasthttp.RequestHeader, p string) bool {
	for _, v := range h.PeekAll("Sec-WebSocket-Protocol") {
		for _, o := range splitList(string(v)) {
			if o == p {
				return true
			}
		}
	}
	return false
}
