package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// ConnRecord is what another node needs to post a connection's close event
// should the node holding it die (SPEC §3, by: node_lost), and to answer
// where a connection is (SPEC §4, GET /connections/<id>). Its JSON, as
// the tags below define it, is the record's one format in Redis: written
// by appendRecord, read by decodeRecord, both through encoding/json.
type ConnRecord struct {
	ID       string          `json:"id"`
	Path     string          `json:"path"`              // the events path
	Headers  [][2]string     `json:"headers,omitempty"` // set on the event request
	State    string          `json:"state,omitempty"`
	Channels []string        `json:"channels,omitempty"`
	Claims   json.RawMessage `json:"claims,omitempty"`
	// ActionCable: the connection speaks ActionCable (SPEC §9), and
	// Identifiers are the subscriptions it holds, which its close event
	// lists.
	ActionCable bool     `json:"ac,omitempty"`
	Identifiers []string `json:"identifiers,omitempty"`
	// Close is the close event its node numbered and had not delivered
	// yet (the connection ended, or the node shut down with the app
	// away, SPEC §5): a survivor posts this one, same id, rather than a
	// node_lost close. nil while the connection is open.
	Close *CloseEvent `json:"close,omitempty"`
	// NoClose: the app asked for no close event (Cablecar-Events). The
	// record is there so that any node can find the connection (admin
	// GET /connections/<id>); a survivor posts nothing for it.
	NoClose bool `json:"noclose,omitempty"`
	// Ended: the connection is gone and its record waits only for its
	// close event to be delivered; Lookup does not find it.
	Ended bool `json:"ended,omitempty"`
}

// CloseEvent is a close event as its node numbered it: its id is
// "<connection id>:<N>".
type CloseEvent struct {
	N      uint64 `json:"n"`
	Code   int    `json:"code"`
	Reason string `json:"reason,omitempty"`
	By     string `json:"by"`
}

// recordEncoder appends records' JSON to one growing buffer, so that a
// pipeline of a thousand records costs one buffer, not a thousand.
type recordEncoder struct {
	buf *bytes.Buffer
	enc *json.Encoder
}

// newRecordEncoder appends to buf, keeping what it holds.
func newRecordEncoder(buf []byte) *recordEncoder {
	e := &recordEncoder{buf: bytes.NewBuffer(buf)}
	e.enc = json.NewEncoder(e.buf)
	// Cookies and paths keep their & < >: the record is read by Cablecar
	// only, never embedded in a page.
	e.enc.SetEscapeHTML(false)
	return e
}

// add encodes rec and returns the offsets of its JSON in the buffer.
// Claims that are not valid JSON are left out (they would fail the whole
// record); Track drops them already.
func (e *recordEncoder) add(rec *ConnRecord) (start, end int) {
	start = e.buf.Len()
	if err := e.enc.Encode(rec); err != nil {
		// Only invalid claims can fail; without them it cannot.
		e.buf.Truncate(start)
		r := *rec
		r.Claims = nil
		if err := e.enc.Encode(&r); err != nil {
			panic(fmt.Sprintf("registry: encoding a connection record: %v", err))
		}
	}
	// Encode ends each value with a newline, which the record does not need.
	e.buf.Truncate(e.buf.Len() - 1)
	return start, e.buf.Len()
}

// bytes is the buffer: records' JSON at the offsets add returned. Valid
// until the next add.
func (e *recordEncoder) bytes() []byte { return e.buf.Bytes() }

// appendRecord appends rec's JSON to dst.
func appendRecord(dst []byte, rec *ConnRecord) []byte {
	e := newRecordEncoder(dst)
	e.add(rec)
	return e.bytes()
}

// decodeRecord reads the record of connection id from its JSON. A record
// without a path cannot be posted, and is as good as unreadable.
func decodeRecord(id string, raw []byte) (ConnRecord, error) {
	var rec ConnRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return ConnRecord{}, fmt.Errorf("connection record of %s: %w", id, err)
	}
	if rec.Path == "" {
		return ConnRecord{}, fmt.Errorf("connection record of %s has no path", id)
	}
	if rec.ID == "" {
		rec.ID = id
	}
	return rec, nil
}

// validClaims returns claims, compacted, or nil when they are not JSON.
func validClaims(claims json.RawMessage) json.RawMessage {
	if len(claims) == 0 || !json.Valid(claims) {
		return nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, claims); err != nil {
		return nil
	}
	if b.Len() == len(claims) {
		return claims // compact already: keep the caller's bytes, not a copy
	}
	return b.Bytes()
}
