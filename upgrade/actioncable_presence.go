package upgrade

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/internal/jsontext"
)

// The ext protocol's presence commands (SPEC §11): join and leave are the
// client's proposals, events for the app, which decides through its
// reply's presence; presence is answered here, from the store.

// acIsExt reports whether c speaks the ext protocol.
func (c *Conn) acIsExt() bool { return c.ac != nil && c.ac.proto == actioncable.Ext }

// acPresenceCommand handles cmd when it is a presence command of an ext
// connection, and reports whether it was one.
func (c *Conn) acPresenceCommand(cmd actioncable.Command) bool {
	if !c.acIsExt() {
		return false
	}
	switch cmd.Kind {
	case actioncable.Join, actioncable.Leave:
		if !c.acSubscribed(cmd.Identifier) {
			c.acMalformed(actioncable.NotSubscribed.String())
			return true
		}
		if cmd.Kind == actioncable.Join && c.acHoldsPresence(cmd.Identifier, cmd.Presence) {
			// Already held (a restored session re-joined it, SPEC §10/§11):
			// the client's re-sent join is a no-op, with no event.
			return true
		}
		typ := callback.EventJoin
		if cmd.Kind == actioncable.Leave {
			typ = callback.EventLeave
		}
		c.acPush(callback.Event{Type: typ, Identifier: cmd.Identifier, Presence: appendProposal(nil, cmd.Presence)})
		return true
	case actioncable.Presence:
		if !c.acSubscribed(cmd.Identifier) {
			c.acMalformed(actioncable.NotSubscribed.String())
			return true
		}
		c.acSend(c.acPresenceInfo(cmd.Identifier))
		return true
	}
	return false
}

// acHoldsPresence says whether c already holds presence id p.ID in the
// presence channel of subscription identifier.
func (c *Conn) acHoldsPresence(identifier string, p *actioncable.PresenceInfo) bool {
	if p == nil || p.ID == "" {
		return false
	}
	ch := c.acPresenceChannel(identifier)
	if ch == "" {
		return false
	}
	m, ok := c.hub.PresenceOf(c.id)[ch]
	return ok && m.ID == p.ID
}

// appendProposal is the event's "presence": what the client sent, as
// {"id":…,"info":…}; {} when it sent none (a bare leave).
func appendProposal(dst []byte, p *actioncable.PresenceInfo) []byte {
	if p == nil {
		return append(dst, "{}"...)
	}
	dst = append(dst, `{"id":`...)
	dst = jsontext.AppendString(dst, p.ID)
	if len(p.Info) > 0 {
		dst = append(dst, `,"info":`...)
		var b json.RawMessage = p.Info
		dst = append(dst, b...)
	}
	return append(dst, '}')
}

// acPresenceInfo is the answer to a presence command: the presence of the
// subscription's presence channel, or an error when there is none or it
// cannot be read.
func (c *Conn) acPresenceInfo(identifier string) []byte {
	ch := c.acPresenceChannel(identifier)
	p := c.hub.pres
	if ch == "" || p == nil {
		return appendACPresence(nil, identifier, []byte(`{"type":"error"}`))
	}
	ctx, cancel := context.WithTimeout(c.hub.ctx, presenceReadTimeout)
	snap, err := p.t.Read(ctx, ch)
	cancel()
	if err != nil {
		c.log.Warn().Err(err).Str("channel", ch).Msg("presence: reading for a presence command failed")
		return appendACPresence(nil, identifier, []byte(`{"type":"error"}`))
	}
	msg := []byte(`{"type":"info","total":`)
	msg = strconv.AppendInt(msg, int64(len(snap.Members)), 10)
	msg = append(msg, `,"records":[`...)
	for i, m := range snap.Members {
		if i > 0 {
			msg = append(msg, ',')
		}
		msg = append(msg, `{"id":`...)
		msg = jsontext.AppendString(msg, m.ID)
		msg = append(msg, `,"info":`...)
		if len(m.Info) == 0 {
			msg = append(msg, "null"...)
		} else {
			msg = append(msg, m.Info...)
		}
		msg = append(msg, '}')
	}
	msg = append(msg, "]}"...)
	return appendACPresence(nil, identifier, msg)
}
