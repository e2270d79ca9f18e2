package callback

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/pubsub"
)

// Presence (SPEC §11): a reply's "presence" joins and leaves; an ext
// ActionCable client's join and leave commands are events the app decides
// on; the presence callback is one signed POST at a time, retried by the
// caller (presence.Poster).

// The event types of an ext client's presence commands: Event.Identifier
// is the subscription, Event.Presence what the client proposed.
const (
	EventJoin  EventType = "join"
	EventLeave EventType = "leave"
)

// PresenceJoin is one presence the app gives a connection: in Channel, or
// (ActionCable) in the presence channel of the subscription Identifier.
type PresenceJoin struct {
	Channel    string
	Identifier string
	ID         string
	Info       json.RawMessage // "null" when absent
}

// PresenceReply is a reply's "presence": joins first, then leaves.
type PresenceReply struct {
	Join []PresenceJoin
	// Leave are channels, or (ActionCable) identifiers of subscriptions.
	Leave []string
}

// Limits of a presence (SPEC §11).
const (
	maxPresenceID   = 256
	maxPresenceInfo = 4096
)

// ParsePresenceJoins reads a JSON object or array of {"channel","id","info"}
// (the accept header Cablecar-Presence, a reply's presence.join); part
// names it in errors.
func ParsePresenceJoins(part string, raw json.RawMessage) ([]PresenceJoin, error) {
	raw = bytes.TrimSpace(raw)
	if isNull(raw) {
		return nil, nil
	}
	var items []json.RawMessage
	if len(raw) > 0 && raw[0] == '{' {
		items = []json.RawMessage{raw}
	} else {
		var err error
		if items, err = array(part, raw); err != nil {
			return nil, err
		}
	}
	out := make([]PresenceJoin, 0, len(items))
	for i, it := range items {
		p := fmt.Sprintf("%s[%d]", part, i)
		fields, err := object(p, it)
		if err != nil {
			return nil, err
		}
		var j PresenceJoin
		if ch, ok := fields["channel"]; ok && !isNull(ch) {
			s, ok := str(ch)
			if !ok {
				return nil, invalid(p+".channel", "must be a string")
			}
			if err := pubsub.ValidateChannel(s); err != nil {
				return nil, invalid(p+".channel", err.Error())
			}
			j.Channel = s
		}
		if id, ok := fields["identifier"]; ok && !isNull(id) {
			if j.Identifier, err = identifier(p+".identifier", id); err != nil {
				return nil, err
			}
		}
		if j.Channel == "" && j.Identifier == "" {
			return nil, invalid(p, `needs "channel" (or, on an ActionCable connection, "identifier")`)
		}
		s, ok := str(fields["id"])
		if !ok || s == "" || len(s) > maxPresenceID {
			return nil, invalid(p+".id", fmt.Sprintf("must be a string of 1–%d bytes", maxPresenceID))
		}
		j.ID = s
		j.Info = json.RawMessage("null")
		if info := bytes.TrimSpace(fields["info"]); len(info) > 0 {
			if len(info) > maxPresenceInfo {
				return nil, invalid(p+".info", fmt.Sprintf("is longer than %d bytes", maxPresenceInfo))
			}
			var b bytes.Buffer
			if err := json.Compact(&b, info); err != nil {
				return nil, invalid(p+".info", "is not JSON")
			}
			j.Info = b.Bytes()
		}
		out = append(out, j)
	}
	return out, nil
}

// parsePresence reads a reply's "presence"; nil when absent.
func parsePresence(raw json.RawMessage) (*PresenceReply, error) {
	if isNull(raw) {
		return nil, nil
	}
	fields, err := object("presence", raw)
	if err != nil {
		return nil, err
	}
	r := &PresenceReply{}
	if r.Join, err = ParsePresenceJoins("presence.join", fields["join"]); err != nil {
		return nil, err
	}
	if lv := fields["leave"]; !isNull(lv) {
		items, err := array("presence.leave", lv)
		if err != nil {
			return nil, err
		}
		for i, it := range items {
			s, ok := str(it)
			if !ok || s == "" {
				return nil, invalid(fmt.Sprintf("presence.leave[%d]", i), "must be a channel or an identifier")
			}
			r.Leave = append(r.Leave, s)
		}
	}
	if len(r.Join) == 0 && len(r.Leave) == 0 {
		return nil, nil
	}
	return r, nil
}

// appendPresence writes an ext presence event's "presence".
func appendPresence(dst []byte, ev *Event) []byte {
	if len(ev.Presence) == 0 {
		return dst
	}
	dst = append(dst, `,"presence":`...)
	return append(dst, ev.Presence...)
}

// PostPresence makes one attempt of the presence callback: body POSTed to
// path, signed (SPEC §6), holding a slot of the cap on requests in flight.
// It returns the app's status, or an error when the app could not be
// asked; retrying is the caller's.
func (c *Client) PostPresence(ctx context.Context, path string, body []byte) (int, error) {
	if !c.acquire(ctx.Done()) {
		return 0, ctx.Err()
	}
	defer c.release()
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	h := &req.Header
	h.SetMethod(fasthttp.MethodPost)
	h.SetRequestURI(path)
	h.SetHost(c.host)
	h.SetContentType("application/json")
	if c.signer.Enabled() {
		h.Set(auth.SignatureHeader, c.signer.Sign(time.Now(), body))
	}
	req.SetBodyRaw(body)
	timeout := c.cfg.Timeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	c.m.inFlight.Inc()
	err := c.hc.DoTimeout(req, resp, timeout)
	c.m.inFlight.Dec()
	if err != nil {
		return 0, err
	}
	return resp.StatusCode(), nil
}
