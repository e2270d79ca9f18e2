package callback

import (
	"encoding/json"
	"fmt"

	"github.com/cablecar/cablecar/internal/jsontext"
	"github.com/cablecar/cablecar/pubsub"
)

// ActionCable connections (SPEC §9): their commands are events, and their
// replies may confirm, reject, stream, transmit and keep a state per
// subscription. What the connection does with them is upgrade's.

// The event types of an ActionCable connection's commands.
const (
	EventSubscribe   EventType = "subscribe"
	EventPerform     EventType = "perform"
	EventUnsubscribe EventType = "unsubscribe"
)

// appendActionCable writes an event's ActionCable fields: the identifier
// and its channel_state (absent when none), a perform's data (the JSON
// text the client sent, as a string), a close event's identifiers.
func appendActionCable(dst []byte, ev *Event, states map[string]string) []byte {
	if ev.Identifier != "" {
		dst = append(dst, `,"identifier":`...)
		dst = jsontext.AppendString(dst, ev.Identifier)
		if ev.Type == EventPerform {
			dst = append(dst, `,"data":`...)
			dst = jsontext.AppendString(dst, bytesString(ev.Data))
		}
		if ev.HasState {
			dst = append(dst, `,"channel_state":`...)
			dst = jsontext.AppendString(dst, ev.State)
		} else if st, ok := states[ev.Identifier]; ok && ev.Type != EventUnsubscribe {
			dst = append(dst, `,"channel_state":`...)
			dst = jsontext.AppendString(dst, st)
		}
	}
	if ev.Identifiers != nil {
		dst = append(dst, `,"identifiers":[`...)
		for i, id := range ev.Identifiers {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsontext.AppendString(dst, id)
		}
		dst = append(dst, ']')
	}
	return dst
}

// StreamRef names a stream of a subscription; Stream "" in a stop_stream
// means all of the identifier's streams.
type StreamRef struct {
	Identifier string
	Stream     string
}

// Transmit is a message for one subscription; Message is JSON text.
type Transmit struct {
	Identifier string
	Message    json.RawMessage
}

// ACReply is what a reply adds for an ActionCable connection (SPEC §9).
type ACReply struct {
	Confirm      []string
	Reject       []string
	Stream       []StreamRef
	StopStream   []StreamRef
	Transmit     []Transmit
	ChannelState map[string]string
}

// acRaw are the reply's ActionCable keys, embedded in ParseReply's.
type acRaw struct {
	Confirm      json.RawMessage `json:"confirm"`
	Reject       json.RawMessage `json:"reject"`
	Stream       json.RawMessage `json:"stream"`
	StopStream   json.RawMessage `json:"stop_stream"`
	Transmit     json.RawMessage `json:"transmit"`
	ChannelState json.RawMessage `json:"channel_state"`
}

// parseActionCable reads the ActionCable keys; nil when there are none.
func parseActionCable(raw *acRaw) (*ACReply, error) {
	if isNull(raw.Confirm) && isNull(raw.Reject) && isNull(raw.Stream) && isNull(raw.StopStream) &&
		isNull(raw.Transmit) && isNull(raw.ChannelState) {
		return nil, nil
	}
	r := &ACReply{}
	var err error
	if r.Confirm, err = identifiers("confirm", raw.Confirm); err != nil {
		return nil, err
	}
	if r.Reject, err = identifiers("reject", raw.Reject); err != nil {
		return nil, err
	}
	if r.Stream, err = streamRefs("stream", raw.Stream, true); err != nil {
		return nil, err
	}
	if r.StopStream, err = streamRefs("stop_stream", raw.StopStream, false); err != nil {
		return nil, err
	}
	if r.Transmit, err = transmits(raw.Transmit); err != nil {
		return nil, err
	}
	if r.ChannelState, err = channelStates(raw.ChannelState); err != nil {
		return nil, err
	}
	return r, nil
}

func identifier(part string, raw json.RawMessage) (string, error) {
	s, ok := str(raw)
	if !ok || s == "" {
		return "", invalid(part, "must be a non-empty string")
	}
	return s, nil
}

func identifiers(part string, raw json.RawMessage) ([]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	items, err := array(part, raw)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(items))
	for i, item := range items {
		id, err := identifier(fmt.Sprintf("%s[%d]", part, i), item)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}

// object decodes a JSON object's fields.
func object(part string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &fields) != nil {
		return nil, invalid(part, "must be an object")
	}
	return fields, nil
}

// streamRefs reads [{"identifier":I,"stream":S}]; needStream: S may not be
// left out (stream), else it may (stop_stream: all of I's).
func streamRefs(part string, raw json.RawMessage, needStream bool) ([]StreamRef, error) {
	if isNull(raw) {
		return nil, nil
	}
	items, err := array(part, raw)
	if err != nil {
		return nil, err
	}
	out := make([]StreamRef, 0, len(items))
	for i, item := range items {
		p := fmt.Sprintf("%s[%d]", part, i)
		fields, err := object(p, item)
		if err != nil {
			return nil, err
		}
		var ref StreamRef
		if ref.Identifier, err = identifier(p+".identifier", fields["identifier"]); err != nil {
			return nil, err
		}
		if s := fields["stream"]; !isNull(s) || needStream {
			var ok bool
			if ref.Stream, ok = str(s); !ok {
				return nil, invalid(p+".stream", "must be a string")
			}
			if err := pubsub.ValidateChannel(ref.Stream); err != nil {
				return nil, invalid(p+".stream", "is not a valid channel: "+err.Error())
			}
		}
		out = append(out, ref)
	}
	return out, nil
}

func transmits(raw json.RawMessage) ([]Transmit, error) {
	if isNull(raw) {
		return nil, nil
	}
	items, err := array("transmit", raw)
	if err != nil {
		return nil, err
	}
	out := make([]Transmit, 0, len(items))
	for i, item := range items {
		p := fmt.Sprintf("transmit[%d]", i)
		fields, err := object(p, item)
		if err != nil {
			return nil, err
		}
		var t Transmit
		if t.Identifier, err = identifier(p+".identifier", fields["identifier"]); err != nil {
			return nil, err
		}
		msg, present := fields["message"]
		if !present {
			return nil, invalid(p+".message", "is missing")
		}
		t.Message = msg
		out = append(out, t)
	}
	return out, nil
}

func channelStates(raw json.RawMessage) (map[string]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	fields, err := object("channel_state", raw)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(fields))
	for id, v := range fields {
		p := fmt.Sprintf("channel_state[%.64q]", id)
		s, ok := str(v)
		if !ok {
			return nil, invalid(p, "must be a string")
		}
		if len(s) > MaxStateSize {
			return nil, invalid(p, fmt.Sprintf("is %d bytes long, more than %d", len(s), MaxStateSize))
		}
		out[id] = s
	}
	return out, nil
}
