package actioncable

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/cablecar/cablecar/internal/jsontext"
)

// The frames Cablecar sends ActionCable clients. Each Append* writes one
// frame's JSON text into dst and returns it, allocating only when dst is
// too small, so a caller with a pooled buffer builds frames for free.

// Disconnect reasons Cablecar gives of its own (SPEC §9); the app's close
// reply and Cablecar's own closes (its "by" value) give others.
const (
	ReasonUnauthorized  = "unauthorized"   // a refused accept
	ReasonTokenExpired  = "token_expired"  // the JWT's exp passed (AnyCable's reason)
	ReasonServerRestart = "server_restart" // shutdown, fencing
	ReasonRemote        = "remote"         // admin /close
)

// Welcome is what the welcome frame says besides its type.
type Welcome struct {
	// SID is an ext session's id (SPEC §10); "" for V1, and then nothing
	// else is written either.
	SID string
	// Restored says the ext session came back with its subscriptions.
	Restored bool
	// RestoredIDs are the identifiers restored, when Restored.
	RestoredIDs []string
}

var welcomeV1 = []byte(`{"type":"welcome"}`)

// AppendWelcome writes {"type":"welcome"}, with "sid", "restored" and
// "restored_ids" for an ext session (AnyCable's extended protocol).
func AppendWelcome(dst []byte, w Welcome) []byte {
	if w.SID == "" {
		return append(dst, welcomeV1...)
	}
	dst = append(dst, `{"type":"welcome","sid":`...)
	dst = jsontext.AppendString(dst, w.SID)
	if w.Restored {
		dst = append(dst, `,"restored":true`...)
		if len(w.RestoredIDs) > 0 {
			dst = append(dst, `,"restored_ids":[`...)
			for i, id := range w.RestoredIDs {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = jsontext.AppendString(dst, id)
			}
			dst = append(dst, ']')
		}
	}
	return append(dst, '}')
}

// AppendPing writes {"type":"ping","message":<unix seconds>}. The frame is
// the same for every connection within a second: build it once per tick.
func AppendPing(dst []byte, unixSeconds int64) []byte {
	dst = append(dst, `{"type":"ping","message":`...)
	dst = strconv.AppendInt(dst, unixSeconds, 10)
	return append(dst, '}')
}

// Ack is the type of a frame that answers a command about one identifier.
type Ack uint8

const (
	ConfirmSubscription Ack = iota + 1
	RejectSubscription
	ConfirmHistory // ext, SPEC §10
	RejectHistory  // ext, SPEC §10
)

var ackTypes = [...]string{
	ConfirmSubscription: `,"type":"confirm_subscription"}`,
	RejectSubscription:  `,"type":"reject_subscription"}`,
	ConfirmHistory:      `,"type":"confirm_history"}`,
	RejectHistory:       `,"type":"reject_history"}`,
}

// AppendAck writes {"identifier":I,"type":T}, as Rails orders it.
func AppendAck(dst []byte, a Ack, identifier string) []byte {
	dst = append(dst, `{"identifier":`...)
	dst = jsontext.AppendString(dst, identifier)
	return append(dst, ackTypes[a]...)
}

// AppendDisconnect writes {"type":"disconnect","reason":R,"reconnect":B},
// the frame before every close: reconnect false is what stops
// @rails/actioncable from retrying.
func AppendDisconnect(dst []byte, reason string, reconnect bool) []byte {
	dst = append(dst, `{"type":"disconnect","reason":`...)
	dst = jsontext.AppendString(dst, reason)
	if reconnect {
		return append(dst, `,"reconnect":true}`...)
	}
	return append(dst, `,"reconnect":false}`...)
}

// AppendMessage writes {"identifier":I,"message":M}: a broadcast, a
// transmit or an admin /send to a subscription. M is payload itself when
// it is JSON (what ActionCable.server.broadcast publishes), else payload
// as a JSON string; isJSON is IsJSON(payload), passed in so that a caller
// writing one payload for many identifiers checks it once.
func AppendMessage(dst []byte, identifier string, payload []byte, isJSON bool) []byte {
	dst = append(dst, `{"identifier":`...)
	dst = jsontext.AppendString(dst, identifier)
	dst = append(dst, `,"message":`...)
	if isJSON {
		dst = append(dst, payload...)
	} else {
		// AppendString does not keep its argument: no copy is needed.
		dst = jsontext.AppendString(dst, unsafe.String(unsafe.SliceData(payload), len(payload)))
	}
	return append(dst, '}')
}

// IsJSON says whether payload goes into a message frame as it is: valid
// JSON, and valid UTF-8 too, for json.Valid does not look inside strings
// and a text frame with invalid UTF-8 would make the browser drop the
// connection.
func IsJSON(payload []byte) bool {
	// A Turbo Stream is HTML: its first byte says so, sparing json.Valid
	// the error it would build.
	i := 0
	for i < len(payload) && (payload[i] == ' ' || payload[i] == '\t' || payload[i] == '\n' || payload[i] == '\r') {
		i++
	}
	if i == len(payload) || !strings.ContainsRune(`{["-0123456789tfn`, rune(payload[i])) {
		return false
	}
	return json.Valid(payload) && utf8.Valid(payload)
}

// messageOverhead is the bytes of a message frame besides the identifier
// and the payload, as JSON strings or as they are.
const messageOverhead = len(`{"identifier":,"message":}`)

// quotedLen is len(jsontext.AppendString(nil, s)), so that a frame shared
// by thousands of send queues is allocated once at its exact size.
func quotedLen(s string) int {
	n := 2
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
				n += 2
			case c < 0x20:
				n += 6
			default:
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			n += 6 // \ufffd
		case r == '\u2028' || r == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}

// Broadcast is one published payload on its way to ActionCable
// subscriptions. Frame builds the frame for an identifier the first time
// it is asked and hands the same bytes to every later caller, so a
// publish to a stream that thousands of connections follow under one
// identifier (a Turbo page's viewers) costs one frame, not thousands.
//
// A Broadcast is for one delivery on one goroutine: it has no lock. Its
// zero value is ready for an empty payload; Reset gives it another. Its
// frames are never written again, so they may sit in any number of send
// queues, and Reset leaves the ones already handed out alone.
type Broadcast struct {
	payload []byte
	isJSON  int8 // 0 not checked yet, 1 JSON, -1 not
	// messageLen is the payload's length in a frame, once isJSON is known.
	messageLen int
	// Most streams are followed under one identifier, some under a few:
	// a short inline list serves them without an allocation of its own,
	// a map the rest.
	n      int
	frames [listFrames]builtFrame
	many   map[string][]byte
}

type builtFrame struct {
	identifier string
	frame      []byte
}

// listFrames is how many identifiers a Broadcast keeps inline before it
// moves to a map.
const listFrames = 4

// NewBroadcast starts the frames of payload, which must not change while
// the Broadcast is in use.
func NewBroadcast(payload []byte) *Broadcast {
	return &Broadcast{payload: payload}
}

// Reset starts over with another payload.
func (b *Broadcast) Reset(payload []byte) {
	*b = Broadcast{payload: payload}
}

// Payload is the payload the frames carry.
func (b *Broadcast) Payload() []byte { return b.payload }

// Frame is {"identifier":identifier,"message":<payload>} (AppendMessage),
// built once per identifier.
func (b *Broadcast) Frame(identifier string) []byte {
	for i := range b.n {
		if b.frames[i].identifier == identifier {
			return b.frames[i].frame
		}
	}
	if f, ok := b.many[identifier]; ok {
		return f
	}
	if b.isJSON == 0 {
		b.isJSON, b.messageLen = 1, len(b.payload)
		if !IsJSON(b.payload) {
			b.isJSON, b.messageLen = -1, quotedLen(unsafe.String(unsafe.SliceData(b.payload), len(b.payload)))
		}
	}
	size := messageOverhead + quotedLen(identifier) + b.messageLen
	f := AppendMessage(make([]byte, 0, size), identifier, b.payload, b.isJSON > 0)
	if b.n < listFrames {
		b.frames[b.n] = builtFrame{identifier, f}
		b.n++
		return f
	}
	if b.many == nil {
		b.many = make(map[string][]byte)
	}
	b.many[identifier] = f
	return f
}
