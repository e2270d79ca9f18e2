package actioncable

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/cablecar/cablecar/internal/jsontext"
)

// Kind is what a client command asks for.
type Kind uint8

const (
	// Subscribe asks for a subscription to Identifier; an ext client may
	// send History and Presence with it.
	Subscribe Kind = iota + 1
	// Message performs an action on a subscription: Data is the JSON
	// text the client sent, {"action":…} with the action's arguments.
	Message
	// Unsubscribe ends a subscription.
	Unsubscribe
	// History asks (ext) for what a subscription missed (SPEC §10).
	History
	// Pong (ext) is liveness only: it names no subscription.
	Pong
	// Join proposes (ext) a presence for a subscription (SPEC §11).
	Join
	// Leave proposes (ext) leaving a subscription's presence.
	Leave
	// Presence asks (ext) who is present in a subscription's stream.
	Presence
)

var kindNames = [...]string{
	Subscribe: "subscribe", Message: "message", Unsubscribe: "unsubscribe", History: "history",
	Pong: "pong", Join: "join", Leave: "leave", Presence: "presence",
}

// String is the command's name on the wire.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return ""
}

func kindNamed(name string) Kind {
	for k, n := range kindNames {
		if n != "" && n == name {
			return Kind(k)
		}
	}
	return 0
}

// Command is one client command, checked: every field its Kind needs is
// there and of the right type.
type Command struct {
	Kind Kind
	// Identifier is the subscription's identifier exactly as the client
	// sent it (the JSON text of its channel and params, opaque here); ""
	// only for Pong.
	Identifier string
	// Data is the JSON text of a Message's action; "" for other kinds.
	Data string
	// History is the ext client's history request: always set for
	// History, set for Subscribe when the client sent one, nil otherwise.
	History *HistoryRequest
	// Presence is the ext client's presence: always set for Join, set for
	// Subscribe and Leave when the client sent one, nil otherwise.
	Presence *PresenceInfo
}

// HistoryRequest is where an ext client stands (AnyCable's extended
// protocol): the positions it last saw per stream, and since when it
// wants what it missed on streams it has no position for.
type HistoryRequest struct {
	// Since is in Unix seconds; 0 when not given.
	Since int64
	// Streams maps a stream to the last position seen on it; nil when
	// none was given.
	Streams map[string]Position
}

// Position is a place in a stream's history (SPEC §10).
type Position struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

// PresenceInfo is who an ext client says it is in a subscription.
type PresenceInfo struct {
	// ID is the presence id; "" when the client gave none (Leave).
	ID string
	// Info is the JSON value the client sent as "info", verbatim; nil
	// when absent.
	Info json.RawMessage
}

// Malformed says what is wrong with a command, for the count the caller
// keeps; ActionCable itself logs such commands and goes on.
type Malformed uint8

const (
	// NotJSON: the frame is not a JSON object.
	NotJSON Malformed = iota + 1
	// UnknownCommand: "command" is missing, not a string, or not one of
	// the commands this package knows (whisper among them).
	UnknownCommand
	// BadIdentifier: "identifier" is missing, blank or not a string.
	BadIdentifier
	// BadData: a message's "data" is missing, not a string, or not JSON
	// text (ActionCable would fail decoding it).
	BadData
	// BadHistory: a "history" object that is missing (history command)
	// or not of the protocol's shape.
	BadHistory
	// BadPresence: a "presence" object that is missing (join) or not of
	// the protocol's shape.
	BadPresence
	// NotSubscribed: a command about an identifier the connection has no
	// subscription for. The parser never returns it (it knows no
	// subscriptions); it is here so the caller counts that case with the
	// others.
	NotSubscribed
)

var malformedNames = [...]string{
	NotJSON: "not_json", UnknownCommand: "unknown_command", BadIdentifier: "bad_identifier",
	BadData: "bad_data", BadHistory: "bad_history", BadPresence: "bad_presence",
	NotSubscribed: "not_subscribed",
}

// String is a short snake_case name, fit for a metric label.
func (m Malformed) String() string {
	if int(m) < len(malformedNames) {
		return malformedNames[m]
	}
	return ""
}

// ParseError is a command ParseCommand refused.
type ParseError struct {
	Why     Malformed
	Command string // the "command" as sent when it was a string, cut to 32 bytes
	Err     error  // detail, for a debug log; may be nil
}

func (e *ParseError) Error() string {
	msg := "actioncable: malformed command (" + e.Why.String() + ")"
	if e.Command != "" {
		msg += " " + strconv.Quote(e.Command)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *ParseError) Unwrap() error { return e.Err }

func malformed(why Malformed, command string, err error) error {
	if len(command) > 32 {
		command = command[:32]
	}
	return &ParseError{Why: why, Command: command, Err: err}
}

// ParseCommand reads one client frame. A malformed one gives a
// *ParseError; the caller counts it by its Why and ignores it, as
// ActionCable does, without closing the connection. Keys are matched
// exactly (Rails reads data["command"]), a key given twice counts the last
// time (as Ruby's JSON does), and keys no command uses are ignored.
func ParseCommand(frame []byte) (Command, error) {
	obj, ok := scanCommand(frame)
	if !ok {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(frame, &m); err != nil || m == nil {
			if err == nil {
				err = errors.New("null")
			}
			return Command{}, malformed(NotJSON, "", err)
		}
		obj = commandFields{command: m["command"], identifier: m["identifier"], data: m["data"],
			history: m["history"], presence: m["presence"]}
	}
	name, ok := stringField(obj.command)
	if !ok {
		return Command{}, malformed(UnknownCommand, "", errors.New(`"command" is missing or not a string`))
	}
	cmd := Command{Kind: kindNamed(name)}
	if cmd.Kind == 0 {
		return Command{}, malformed(UnknownCommand, name, nil)
	}
	if cmd.Kind == Pong {
		return cmd, nil
	}
	// Rails refuses a blank identifier (present?), spaces only included.
	if cmd.Identifier, ok = stringField(obj.identifier); !ok || strings.TrimSpace(cmd.Identifier) == "" {
		return Command{}, malformed(BadIdentifier, name, errors.New(`"identifier" is missing, blank or not a string`))
	}
	var err error
	switch cmd.Kind {
	case Message:
		if cmd.Data, ok = stringField(obj.data); !ok || !json.Valid([]byte(cmd.Data)) {
			return Command{}, malformed(BadData, name, errors.New(`"data" is not a string holding JSON`))
		}
	case Subscribe:
		if cmd.History, err = parseHistory(obj.history); err != nil {
			return Command{}, malformed(BadHistory, name, err)
		}
		if cmd.Presence, err = parsePresence(obj.presence, false); err != nil {
			return Command{}, malformed(BadPresence, name, err)
		}
	case History:
		if cmd.History, err = parseHistory(obj.history); err == nil && cmd.History == nil {
			err = errors.New(`"history" is missing`)
		}
		if err != nil {
			return Command{}, malformed(BadHistory, name, err)
		}
	case Join, Leave:
		if cmd.Presence, err = parsePresence(obj.presence, cmd.Kind == Join); err != nil {
			return Command{}, malformed(BadPresence, name, err)
		}
	}
	return cmd, nil
}

// commandFields are the members of a command that any command reads, as
// raw JSON; nil when absent.
type commandFields struct {
	command, identifier, data, history, presence json.RawMessage
}

// scanCommand reads frame's members without a map (members.go); false
// when it cannot, and the caller decodes the slow way.
func scanCommand(frame []byte) (commandFields, bool) {
	var ms [maxMembers]member
	n, ok := scanMembers(frame, &ms)
	if !ok {
		return commandFields{}, false
	}
	var f commandFields
	for _, m := range ms[:n] {
		switch string(m.key) {
		case "command":
			f.command = m.value
		case "identifier":
			f.identifier = m.value
		case "data":
			f.data = m.value
		case "history":
			f.history = m.value
		case "presence":
			f.presence = m.value
		}
	}
	return f, true
}

// stringField decodes a JSON string; false for anything else, absence
// included.
func stringField(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	if s, ok := plainString(raw); ok {
		return s, true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

func isNull(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

// parseHistory reads {"since":<unix seconds>,"streams":{S:{"epoch":E,"offset":O}}};
// nil when absent or null.
func parseHistory(raw json.RawMessage) (*HistoryRequest, error) {
	if isNull(raw) {
		return nil, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return nil, errors.New(`"history" is not an object`)
	}
	h := &HistoryRequest{}
	if since := fields["since"]; !isNull(since) {
		s, err := unixSeconds(since)
		if err != nil {
			return nil, err
		}
		h.Since = s
	}
	if streams := fields["streams"]; !isNull(streams) {
		if err := json.Unmarshal(streams, &h.Streams); err != nil {
			return nil, fmt.Errorf(`"history.streams" is not a map of positions: %w`, err)
		}
		if len(h.Streams) == 0 {
			h.Streams = nil
		}
	}
	return h, nil
}

// unixSeconds reads a non-negative JSON number of seconds; a fraction
// (Date.now()/1000 sent as is) is cut off.
func unixSeconds(raw json.RawMessage) (int64, error) {
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil || (len(raw) > 0 && raw[0] == '"') {
		return 0, errors.New(`"history.since" is not a number`)
	}
	if s, err := n.Int64(); err == nil && s >= 0 {
		return s, nil
	}
	f, err := n.Float64()
	if err != nil || f < 0 || f >= math.MaxInt64 {
		return 0, fmt.Errorf(`"history.since" %.32s is not a time in Unix seconds`, raw)
	}
	return int64(f), nil
}

// parsePresence reads {"id":…,"info":…}; nil when absent or null, which
// only a join may not be.
func parsePresence(raw json.RawMessage, required bool) (*PresenceInfo, error) {
	if isNull(raw) {
		if required {
			return nil, errors.New(`"presence" is missing`)
		}
		return nil, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return nil, errors.New(`"presence" is not an object`)
	}
	p := &PresenceInfo{}
	if id := fields["id"]; !isNull(id) {
		var ok bool
		if p.ID, ok = stringField(id); !ok {
			return nil, errors.New(`"presence.id" is not a string`)
		}
	}
	if required && p.ID == "" {
		return nil, errors.New(`"presence.id" is missing or empty`)
	}
	// Unmarshal gave each RawMessage its own copy: nothing aliases frame.
	p.Info = fields["info"]
	return p, nil
}

// AppendJSON writes the command as a client sends it; ParseCommand reads
// it back to the same Command. Tests and tools speak to Cablecar with it.
func (c Command) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"command":`...)
	dst = jsontext.AppendString(dst, c.Kind.String())
	if c.Kind != Pong {
		dst = append(dst, `,"identifier":`...)
		dst = jsontext.AppendString(dst, c.Identifier)
	}
	if c.Kind == Message {
		dst = append(dst, `,"data":`...)
		dst = jsontext.AppendString(dst, c.Data)
	}
	if h := c.History; h != nil {
		dst = append(dst, `,"history":{`...)
		comma := false
		if h.Since != 0 {
			dst = append(dst, `"since":`...)
			dst = strconv.AppendInt(dst, h.Since, 10)
			comma = true
		}
		if h.Streams != nil {
			if comma {
				dst = append(dst, ',')
			}
			dst = append(dst, `"streams":{`...)
			streams := make([]string, 0, len(h.Streams))
			for s := range h.Streams {
				streams = append(streams, s)
			}
			slices.Sort(streams)
			for i, s := range streams {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = jsontext.AppendString(dst, s)
				dst = append(dst, `:{"epoch":`...)
				dst = jsontext.AppendString(dst, h.Streams[s].Epoch)
				dst = append(dst, `,"offset":`...)
				dst = strconv.AppendUint(dst, h.Streams[s].Offset, 10)
				dst = append(dst, '}')
			}
			dst = append(dst, '}')
		}
		dst = append(dst, '}')
	}
	if p := c.Presence; p != nil {
		dst = append(dst, `,"presence":{"id":`...)
		dst = jsontext.AppendString(dst, p.ID)
		if len(p.Info) > 0 {
			dst = append(dst, `,"info":`...)
			dst = append(dst, bytes.TrimSpace(p.Info)...)
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}
