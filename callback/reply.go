package callback

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/cablecar/cablecar/pubsub"
)

// Limits on a reply (SPEC §2, §3; RFC 6455 §5.5: a close frame's payload is
// at most 125 bytes, 2 of them the code). MaxStateSize bounds the state
// wherever the app sets it: a reply's state and the accept's
// Cablecar-State header alike.
const (
	MaxStateSize       = 4 << 10
	MaxCloseReasonSize = 123
)

// AppCloseCode reports whether the app (a reply, or the admin API) may ask
// for code: 1000, or its own 3000–4999; the others are the protocol's.
func AppCloseCode(code int) bool { return code == 1000 || (code >= 3000 && code <= 4999) }

// Frame is one message for the client.
type Frame struct {
	Data   []byte
	Binary bool
}

// Publication is a broadcast the app asked for in a reply.
type Publication struct {
	Channel    string
	Data       []byte
	Binary     bool
	ExceptSelf bool
}

// CloseRequest is the app asking to close the connection.
type CloseRequest struct {
	Code   int
	Reason string
	// NoReconnect: the close object's "reconnect" was false, which an
	// ActionCable client is told in its disconnect frame (SPEC §9).
	NoReconnect bool
}

// Reply is what the app asked for in answer to a batch of events. Every
// slice it holds is its own: nothing refers to the response it came from.
type Reply struct {
	Send        []Frame
	Subscribe   []string
	Unsubscribe []string
	Publish     []Publication
	State       *string       // nil = unchanged
	Close       *CloseRequest // nil = stay open
	// ActionCable is what a reply to an ActionCable connection may add
	// (SPEC §9); nil when it adds nothing.
	ActionCable *ACReply
	// Presence joins and leaves (SPEC §11, presence.go); nil when none.
	Presence *PresenceReply
}

// Empty reports whether the reply asks for nothing.
func (r *Reply) Empty() bool {
	return len(r.Send) == 0 && len(r.Subscribe) == 0 && len(r.Unsubscribe) == 0 &&
		len(r.Publish) == 0 && r.State == nil && r.Close == nil && r.ActionCable == nil && r.Presence == nil
}

// Messages is the reply's publish as broker messages. except is the
// connection the reply answers: a publication with except_self skips it.
// "" skips none, for a connection that is gone everywhere already.
func (r *Reply) Messages(except string) []pubsub.Message {
	if len(r.Publish) == 0 {
		return nil
	}
	msgs := make([]pubsub.Message, len(r.Publish))
	for i, p := range r.Publish {
		msgs[i] = pubsub.Message{Channel: p.Channel, Data: p.Data, Binary: p.Binary}
		if p.ExceptSelf {
			msgs[i].Except = except
		}
	}
	return msgs
}

// ParseReply parses a 2xx reply body (SPEC §3). A body of content type
// application/json (with or without parameters) is a JSON object of send,
// subscribe, unsubscribe, publish, state and close; other keys are
// ignored, and a null value counts as absent. Any other non-empty body is
// one text frame, so it must be valid UTF-8. An empty body gives a nil
// Reply.
//
// Any invalid part makes the whole reply invalid: the error wraps
// ErrInvalidReply and names the part (never quoting the body at length),
// so it can be logged.
func ParseReply(contentType, body []byte) (*Reply, error) {
	if !isJSON(contentType) {
		if len(body) == 0 {
			return nil, nil
		}
		if !utf8.Valid(body) {
			return nil, invalid("body", "is not application/json and not valid UTF-8 text")
		}
		return &Reply{Send: []Frame{{Data: bytes.Clone(body)}}}, nil
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, nil
	}
	if body[0] != '{' {
		return nil, invalid("body", "must be a JSON object")
	}
	var raw struct {
		Send        json.RawMessage `json:"send"`
		Subscribe   json.RawMessage `json:"subscribe"`
		Unsubscribe json.RawMessage `json:"unsubscribe"`
		Publish     json.RawMessage `json:"publish"`
		State       json.RawMessage `json:"state"`
		Close       json.RawMessage `json:"close"`
		Presence    json.RawMessage `json:"presence"`
		acRaw
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, invalid("body", "is not valid JSON: "+err.Error())
	}
	r := &Reply{}
	var err error
	if r.Send, err = parseSend(raw.Send); err != nil {
		return nil, err
	}
	if r.Subscribe, err = parseChannels("subscribe", raw.Subscribe); err != nil {
		return nil, err
	}
	if r.Unsubscribe, err = parseChannels("unsubscribe", raw.Unsubscribe); err != nil {
		return nil, err
	}
	if r.Publish, err = parsePublish(raw.Publish); err != nil {
		return nil, err
	}
	if r.State, err = parseState(raw.State); err != nil {
		return nil, err
	}
	if r.Close, err = parseClose(raw.Close); err != nil {
		return nil, err
	}
	if r.ActionCable, err = parseActionCable(&raw.acRaw); err != nil {
		return nil, err
	}
	if r.Presence, err = parsePresence(raw.Presence); err != nil {
		return nil, err
	}
	return r, nil
}

func invalid(part, why string) error {
	return fmt.Errorf("%w: %s %s", ErrInvalidReply, part, why)
}

// isJSON matches application/json with or without parameters, in any case.
func isJSON(contentType []byte) bool {
	mt, _, _ := bytes.Cut(contentType, []byte{';'})
	return bytes.EqualFold(bytes.TrimSpace(mt), []byte("application/json"))
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// array splits a JSON array into its items.
func array(part string, raw json.RawMessage) ([]json.RawMessage, error) {
	if raw[0] != '[' {
		return nil, invalid(part, "must be an array")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, invalid(part, "must be an array")
	}
	return items, nil
}

// str decodes a JSON string; ok is false for any other JSON value.
func str(raw json.RawMessage) (s string, ok bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	return s, json.Unmarshal(raw, &s) == nil
}

// boolean decodes an optional JSON boolean (absent or null is false).
func boolean(part string, raw json.RawMessage) (bool, error) {
	if isNull(raw) {
		return false, nil
	}
	switch string(raw) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, invalid(part, "must be true or false")
}

// payload decodes the data of a send or publish item: text as it is, or
// standard base64 when binary.
func payload(part string, raw json.RawMessage, binary bool) ([]byte, error) {
	if isNull(raw) {
		return nil, invalid(part, "is missing")
	}
	s, ok := str(raw)
	if !ok {
		return nil, invalid(part, "must be a string")
	}
	if !binary {
		return []byte(s), nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, invalid(part, "is not valid standard base64")
	}
	return b, nil
}

func parseSend(raw json.RawMessage) ([]Frame, error) {
	if isNull(raw) {
		return nil, nil
	}
	items, err := array("send", raw)
	if err != nil {
		return nil, err
	}
	frames := make([]Frame, 0, len(items))
	for i, item := range items {
		part := fmt.Sprintf("send[%d]", i)
		if s, ok := str(item); ok {
			frames = append(frames, Frame{Data: []byte(s)})
			continue
		}
		if item[0] != '{' {
			return nil, invalid(part, `must be a string or an object {"data": …, "binary": …}`)
		}
		var f struct {
			Data   json.RawMessage `json:"data"`
			Binary json.RawMessage `json:"binary"`
		}
		if err := json.Unmarshal(item, &f); err != nil {
			return nil, invalid(part, "is not a valid object")
		}
		binary, err := boolean(part+".binary", f.Binary)
		if err != nil {
			return nil, err
		}
		data, err := payload(part+".data", f.Data, binary)
		if err != nil {
			return nil, err
		}
		frames = append(frames, Frame{Data: data, Binary: binary})
	}
	return frames, nil
}

func parseChannels(part string, raw json.RawMessage) ([]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	items, err := array(part, raw)
	if err != nil {
		return nil, err
	}
	channels := make([]string, 0, len(items))
	for i, item := range items {
		p := fmt.Sprintf("%s[%d]", part, i)
		ch, ok := str(item)
		if !ok {
			return nil, invalid(p, "must be a string")
		}
		if err := pubsub.ValidateChannel(ch); err != nil {
			return nil, invalid(p, "is not a valid channel: "+err.Error())
		}
		channels = append(channels, ch)
	}
	return channels, nil
}

func parsePublish(raw json.RawMessage) ([]Publication, error) {
	if isNull(raw) {
		return nil, nil
	}
	items, err := array("publish", raw)
	if err != nil {
		return nil, err
	}
	pubs := make([]Publication, 0, len(items))
	for i, item := range items {
		part := fmt.Sprintf("publish[%d]", i)
		if item[0] != '{' {
			return nil, invalid(part, `must be an object {"channel": …, "data": …}`)
		}
		var p struct {
			Channel    json.RawMessage `json:"channel"`
			Data       json.RawMessage `json:"data"`
			Binary     json.RawMessage `json:"binary"`
			ExceptSelf json.RawMessage `json:"except_self"`
		}
		if err := json.Unmarshal(item, &p); err != nil {
			return nil, invalid(part, "is not a valid object")
		}
		if isNull(p.Channel) {
			return nil, invalid(part+".channel", "is missing")
		}
		ch, ok := str(p.Channel)
		if !ok {
			return nil, invalid(part+".channel", "must be a string")
		}
		if err := pubsub.ValidateChannel(ch); err != nil {
			return nil, invalid(part+".channel", "is not a valid channel: "+err.Error())
		}
		binary, err := boolean(part+".binary", p.Binary)
		if err != nil {
			return nil, err
		}
		except, err := boolean(part+".except_self", p.ExceptSelf)
		if err != nil {
			return nil, err
		}
		data, err := payload(part+".data", p.Data, binary)
		if err != nil {
			return nil, err
		}
		pubs = append(pubs, Publication{Channel: ch, Data: data, Binary: binary, ExceptSelf: except})
	}
	return pubs, nil
}

func parseState(raw json.RawMessage) (*string, error) {
	if isNull(raw) {
		return nil, nil
	}
	s, ok := str(raw)
	if !ok {
		return nil, invalid("state", "must be a string")
	}
	if len(s) > MaxStateSize {
		return nil, invalid("state", fmt.Sprintf("is %d bytes long, more than %d", len(s), MaxStateSize))
	}
	return &s, nil
}

func parseClose(raw json.RawMessage) (*CloseRequest, error) {
	if isNull(raw) {
		return nil, nil
	}
	if raw[0] != '{' {
		return nil, invalid("close", `must be an object {"code": …, "reason": …}`)
	}
	var c struct {
		Code      json.RawMessage `json:"code"`
		Reason    json.RawMessage `json:"reason"`
		Reconnect json.RawMessage `json:"reconnect"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, invalid("close", "is not a valid object")
	}
	if isNull(c.Reconnect) {
		c.Reconnect = json.RawMessage("true")
	}
	reconnect, err := boolean("close.reconnect", c.Reconnect)
	if err != nil {
		return nil, err
	}
	cr := &CloseRequest{Code: 1000, NoReconnect: !reconnect}
	if !isNull(c.Code) {
		if err := json.Unmarshal(c.Code, &cr.Code); err != nil {
			return nil, invalid("close.code", "must be an integer")
		}
		if !AppCloseCode(cr.Code) {
			return nil, invalid("close.code", fmt.Sprintf("is %d: only 1000 and 3000–4999 may be asked for", cr.Code))
		}
	}
	if !isNull(c.Reason) {
		s, ok := str(c.Reason)
		if !ok {
			return nil, invalid("close.reason", "must be a string")
		}
		if len(s) > MaxCloseReasonSize {
			return nil, invalid("close.reason", fmt.Sprintf("is %d bytes long, more than %d", len(s), MaxCloseReasonSize))
		}
		cr.Reason = s
	}
	return cr, nil
}
