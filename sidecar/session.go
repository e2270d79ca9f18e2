package sidecar

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/admin"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/registry"
	"github.com/cablecar/cablecar/session"
	"github.com/cablecar/cablecar/upgrade"
)

// Session restore (SPEC §10): the store of ext sessions, in memory or in
// Redis beside the registry; the held closes it posts when due, through
// the callback client; the lost node's sessions, whose closes wait too;
// and shutdown, which writes the holds (Redis) or posts them (memory:
// nothing outlives the process).

// newSessions builds the store: nil when actioncable.session_ttl is 0.
func newSessions(ttl time.Duration, rdb redis.UniversalClient, prefix, node string, log zerolog.Logger) session.Store {
	switch {
	case ttl <= 0:
		return nil
	case rdb != nil:
		return session.NewRedis(rdb, prefix, node, ttl, log)
	}
	return session.NewMemory(ttl)
}

// runSessions runs the store until stop; done is closed when it returns.
func (s *Sidecar) runSessions() {
	if s.sessions == nil {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	s.stopSessions, s.sessionsDone = stop, make(chan struct{})
	go func() {
		defer close(s.sessionsDone)
		s.sessions.Run(ctx, func(ss *session.Session, settled func()) { s.postHeld(ctx, ss, settled) })
	}()
}

// postHeld posts a session's held close, now due.
func (s *Sidecar) postHeld(ctx context.Context, ss *session.Session, settled func()) {
	if ss.NoClose || ss.Close == nil {
		settled()
		return
	}
	rec := registry.ConnRecord{ID: ss.ConnID, Path: ss.Path, Headers: ss.Headers, State: ss.State,
		Channels: ss.Channels(), Claims: ss.Claims, ActionCable: true, Identifiers: ss.Identifiers(),
		Close: &registry.CloseEvent{N: ss.Close.N, Code: ss.Close.Code, Reason: ss.Close.Reason, By: ss.Close.By}}
	var err error
	if s.sessions.Durable() {
		// Another node takes it again should this one not post it
		// (session.Redis: postRetry).
		err = s.cb.PostLost(rec, callback.Event{}, ctx.Done(), settled)
	} else {
		err = s.cb.PostHeld(rec, settled)
	}
	if err != nil && !errors.Is(err, callback.ErrClosesFull) && !errors.Is(err, callback.ErrShutdown) {
		s.log.Error().Err(err).Str("conn_id", ss.ConnID).Msg("a held close event cannot be posted")
		settled()
	}
}

// endSessions, on shutdown once the connections are closed: with Redis
// the holds are written (any node posts them when due), in memory the
// held closes are posted now.
func (s *Sidecar) endSessions(ctx context.Context) {
	switch st := s.sessions.(type) {
	case nil:
	case *session.Memory:
		for _, ss := range st.TakeHeld() {
			s.postHeld(ctx, ss, func() {})
		}
	default:
		if err := st.Flush(ctx); err != nil {
			s.log.Warn().Err(err).Msg("sessions not written to Redis before shutdown: their connections' records stay for another node")
		}
	}
}

// stopSessionStore stops the store's goroutines.
func (s *Sidecar) stopSessionStore() {
	if s.stopSessions != nil {
		s.stopSessions()
		<-s.sessionsDone
	}
}

// holdLost: a lost node's connection with a session: its close waits
// for a restore like any other (SPEC §10). It reports whether the record
// is dealt with (held, or its session goes on elsewhere).
func (s *Sidecar) holdLost(node string, rec registry.ConnRecord) (bool, error) {
	st, ok := s.sessions.(*session.Redis)
	if !ok || !rec.ActionCable || rec.Close != nil {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	held, goesOn, err := st.Lost(ctx, rec.ID, node, session.Close{N: callback.LostCloseN,
		Code: websocket.CloseAbnormalClosure, Reason: "node lost", By: upgrade.ByNodeLost})
	return held || goesOn, err
}

// findSession is the admin lookup's last resort: a session held (no node
// holds its connection) or restored on a node other than the one its id
// names.
func (s *Sidecar) findSession(ctx context.Context, id string) (admin.Connection, bool, error) {
	if s.sessions == nil {
		return admin.Connection{}, false, nil
	}
	ss, detached, err := s.sessions.Find(ctx, id)
	if err != nil || ss == nil {
		return admin.Connection{}, false, err
	}
	c := admin.Connection{ID: id, Channels: ss.Channels(), Detached: detached}
	if !detached {
		c.Node = ss.Node
	}
	slices.Sort(c.Channels)
	if c.Channels == nil {
		c.Channels = []string{}
	}
	return c, true, nil
}
