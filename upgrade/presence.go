package upgrade

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/internal/jsontext"
	"github.com/cablecar/cablecar/presence"
	"github.com/cablecar/cablecar/pubsub"
)

// Presence (SPEC §11). The hub tells the node's presence.Tracker which
// connection holds which (channel, id) — from the accept's
// Cablecar-Presence, a reply's presence, an unsubscribe, the connection's
// end — and how many connections each channel has here. The joins and
// leaves the store decides are published on their channel, marked (Except
// is presenceMark), so they reach the nodes with subscribers of it and no
// others; there each is handed to the subscribers that hear presence
// (Cablecar-Presence-Events: on; ext ActionCable subscriptions whose
// presence channel it is), never delivered as a broadcast. An ext
// client's presence commands are answered here (presence) or become
// events (join, leave).

// presenceMark, as a message's Except, makes it a join or leave rather
// than a broadcast. No connection has this id ('~' is in none), and the
// app's publications never carry an Except of its choosing (only
// except_self, the replying connection's own id).
const presenceMark = "~presence"

// eventPresence: the raw connection asked for presence messages.
const eventPresence eventSet = 1 << 6

// hubPresence is the hub's presence; nil when off.
type hubPresence struct {
	t *presence.Tracker
}

// EnablePresence hands the hub its presence tracker. Call it before the
// first connection.
func (h *Hub) EnablePresence(t *presence.Tracker) { h.pres = &hubPresence{t: t} }

// Members is how many of this node's connections are subscribed to
// channel (the tracker's Counts).
func (h *Hub) Members(channel string) int {
	s := h.chanShard(channel)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if ch := s.chans[channel]; ch != nil {
		return len(ch.members)
	}
	return 0
}

// presenceCounted says channel's count of members here changed.
func (h *Hub) presenceCounted(channel string) {
	if h.pres != nil {
		h.pres.t.Counted(channel)
	}
}

// presenceGone drops c's presences: it went away (leave_delay applies).
func (h *Hub) presenceGone(c *Conn) {
	if h.pres != nil {
		h.pres.t.Drop(c.id)
	}
}

// PresenceOf is what connection conn holds (channel → {id, info}), for a
// session to keep and restore; nil when nothing or presence is off.
func (h *Hub) PresenceOf(conn string) map[string]presence.Member {
	if h.pres == nil {
		return nil
	}
	return h.pres.t.Holdings(conn)
}

// PresenceRejoin gives connection conn the presences it held before (a
// restored session, SPEC §10/§11: channel → {id, info}, from PresenceOf
// while the old connection lived); one it holds already is left as it is
// (the client's re-sent join is then a no-op). Call it before the old
// connection's drop has waited leave_delay and the id never leaves.
func (h *Hub) PresenceRejoin(conn string, held map[string]presence.Member) {
	if h.pres == nil {
		return
	}
	for ch, m := range held {
		h.pres.t.Join(conn, ch, m.ID, m.Info)
	}
}

// parsePresenceAccept reads the accept's Cablecar-Presence and
// Cablecar-Presence-Events.
func parsePresenceAccept(resp *fasthttp.ResponseHeader) ([]callback.PresenceJoin, bool, error) {
	on := strings.EqualFold(strings.TrimSpace(string(resp.Peek("Cablecar-Presence-Events"))), "on")
	v := resp.Peek("Cablecar-Presence")
	if len(v) == 0 {
		return nil, on, nil
	}
	joins, err := callback.ParsePresenceJoins("Cablecar-Presence", v)
	if err != nil {
		return nil, on, err
	}
	return joins, on, nil
}

// presenceAccepted applies the accept's presence headers to c, once it is
// in the hub and subscribed: an invalid header refuses the handshake.
func (s *Server) presenceAccepted(c *Conn, resp *fasthttp.ResponseHeader) error {
	joins, on, err := parsePresenceAccept(resp)
	if err != nil {
		return err
	}
	if on {
		c.events |= eventPresence
	}
	if len(joins) > 0 && s.hub.pres == nil {
		return fmt.Errorf("Cablecar-Presence: presence is off on this node")
	}
	c.presenceApply(&callback.PresenceReply{Join: joins})
	return nil
}

// presenceApply carries out a reply's presence: joins, then leaves.
func (c *Conn) presenceApply(r *callback.PresenceReply) {
	p := c.hub.pres
	if r == nil || p == nil {
		return
	}
	for _, j := range r.Join {
		ch := j.Channel
		if ch == "" {
			if ch = c.acPresenceChannel(j.Identifier); ch == "" {
				c.log.Debug().Str("identifier", j.Identifier).Msg("presence: join for a subscription that streams nothing: ignored")
				continue
			}
		}
		p.t.Join(c.id, ch, j.ID, j.Info)
	}
	for _, name := range r.Leave {
		if pubsub.ValidateChannel(name) != nil {
			name = c.acPresenceChannel(name)
		}
		if name != "" {
			p.t.Leave(c.id, name)
		}
	}
	// An ext session keeps what is held, to give it back on restore.
	c.acSessionChanged()
}

// presenceUnsubscribed: an unsubscribe is an explicit leave of the
// channels' presences.
func (c *Conn) presenceUnsubscribed(channels []string) {
	if p := c.hub.pres; p != nil {
		for _, ch := range channels {
			p.t.Leave(c.id, ch)
		}
	}
}

// acPresenceChannel is the presence channel of subscription id: the first
// stream it streams from; "" when none (or not ActionCable).
func (c *Conn) acPresenceChannel(id string) string {
	if c.ac == nil {
		return ""
	}
	c.ac.mu.RLock()
	defer c.ac.mu.RUnlock()
	if sub := c.ac.sub(intern(id)); sub != nil && len(sub.streams) > 0 {
		return sub.streams[0].Value()
	}
	return ""
}

// presenceNotify is the tracker's Notify: a join or leave decided here
// goes to every node's subscribers.
func (h *Hub) presenceNotify(ev presence.Event) {
	data := appendRawPresence(nil, &ev)
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.BrokerTimeout)
	defer cancel()
	if err := h.broker.Publish(ctx, pubsub.Message{Channel: ev.Channel, Data: data, Except: presenceMark}); err != nil {
		h.log.Warn().Err(err).Str("channel", ev.Channel).Msg("presence: announcing a join or leave failed")
	}
}

// PresenceNotify announces ev (a lost node's leave) to every node.
func (h *Hub) PresenceNotify(ev presence.Event) { h.presenceNotify(ev) }

// appendRawPresence is the message a raw subscriber gets:
// {"presence":"join"|"leave","channel":C,"id":…,"info":…}.
func appendRawPresence(dst []byte, ev *presence.Event) []byte {
	dst = append(dst, `{"presence":`...)
	dst = jsontext.AppendString(dst, ev.Type)
	dst = append(dst, `,"channel":`...)
	dst = jsontext.AppendString(dst, ev.Channel)
	dst = append(dst, `,"id":`...)
	dst = jsontext.AppendString(dst, ev.Who)
	dst = append(dst, `,"info":`...)
	if len(ev.Info) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, ev.Info...)
	}
	return append(dst, '}')
}

// presenceDeliver hands a join or leave published on its channel to this
// node's subscribers of it that hear presence.
func (h *Hub) presenceDeliver(m pubsub.Message) {
	var ev struct {
		Type    string          `json:"presence"`
		Channel string          `json:"channel"`
		ID      string          `json:"id"`
		Info    json.RawMessage `json:"info"`
	}
	if json.Unmarshal(m.Data, &ev) != nil || ev.Channel == "" {
		return
	}
	s := h.chanShard(ev.Channel)
	s.mu.RLock()
	var targets []*Conn
	if ch := s.chans[ev.Channel]; ch != nil {
		targets = append(targets, ch.members...)
	}
	s.mu.RUnlock()
	if len(targets) == 0 {
		return
	}
	raw := outgoing{frame: newFrame(false, m.Data), size: len(m.Data)}
	for _, c := range targets {
		switch {
		case c.ac != nil:
			c.acPresenceDeliver(ev.Channel, ev.Type, ev.ID, ev.Info)
		case c.events.has(eventPresence):
			c.deliver(raw)
		}
	}
}

// acPresenceDeliver sends an ext connection's subscriptions whose presence
// channel is channel AnyCable's presence frame.
func (c *Conn) acPresenceDeliver(channel, typ, id string, info json.RawMessage) {
	if !c.acIsExt() {
		return
	}
	c.ac.mu.RLock()
	var ids []string
	ch := intern(channel)
	for _, sub := range c.ac.subs {
		if len(sub.streams) > 0 && sub.streams[0] == ch {
			ids = append(ids, sub.id.Value())
		}
	}
	c.ac.mu.RUnlock()
	for _, ident := range ids {
		msg := []byte(`{"type":`)
		msg = jsontext.AppendString(msg, typ)
		msg = append(msg, `,"id":`...)
		msg = jsontext.AppendString(msg, id)
		if typ == presence.Join {
			msg = append(msg, `,"info":`...)
			if len(info) == 0 {
				msg = append(msg, "null"...)
			} else {
				msg = append(msg, info...)
			}
		}
		msg = append(msg, '}')
		c.acSend(appendACPresence(nil, ident, msg))
	}
}

// appendACPresence is {"type":"presence","identifier":I,"message":msg}.
func appendACPresence(dst []byte, identifier string, msg []byte) []byte {
	dst = append(dst, `{"type":"presence","identifier":`...)
	dst = jsontext.AppendString(dst, identifier)
	dst = append(dst, `,"message":`...)
	dst = append(dst, msg...)
	return append(dst, '}')
}

// presenceReadTimeout bounds an ext presence command's read.
const presenceReadTimeout = 5 * time.Second
