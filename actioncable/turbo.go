package actioncable

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cablecar/cablecar/pubsub"
)

// StreamVerifier checks turbo-rails' signed stream names. turbo-rails
// signs with ActiveSupport::MessageVerifier.new(key, digest: "SHA256",
// serializer: JSON) (Turbo.signed_stream_verifier), whose generate(name)
// is
//
//	<strict Base64 of the JSON of name>--<lowercase hex HMAC-SHA256 of that Base64 text>
//
// and the name it signs is already a string: turbo_stream_from joins an
// array of streamables with ":" before signing. AnyCable's signed streams
// ($pubsub, @anycable/web's streamFromSigned) use the same format.
type StreamVerifier struct {
	key []byte
}

// ErrBadSignature is a signed stream name that was not signed with the key
// (or is not a signed name at all).
var ErrBadSignature = errors.New("the signed stream name's signature does not match turbo_streams_secret")

// NewStreamVerifier verifies with key, Rails'
// config.turbo.signed_stream_verifier_key, used as it is (MessageVerifier
// does not derive anything from it).
func NewStreamVerifier(key string) *StreamVerifier {
	return &StreamVerifier{key: []byte(key)}
}

// separator is what MessageVerifier puts between the data and its digest.
const separator = "--"

// Sign is what turbo-rails' signed_stream_name gives for an already-joined
// stream name (valid UTF-8): for tests and tools that build Turbo pages.
func (v *StreamVerifier) Sign(name string) string {
	data := base64.StdEncoding.EncodeToString(appendRubyJSON(nil, name))
	var digest [2 * sha256.Size]byte
	v.digest(&digest, data)
	return data + separator + string(digest[:])
}

// appendRubyJSON writes s as Ruby's JSON.dump does, which is what
// MessageVerifier signs: unlike encoding/json it leaves <, >, &, U+2028
// and U+2029 as they are, and writes \b and \f short.
func appendRubyJSON(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c >= 0x20:
			dst = append(dst, c)
		case c == '\b':
			dst = append(dst, '\\', 'b')
		case c == '\f':
			dst = append(dst, '\\', 'f')
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
	}
	return append(dst, '"')
}

func (v *StreamVerifier) digest(dst *[2 * sha256.Size]byte, data string) {
	mac := hmac.New(sha256.New, v.key)
	mac.Write([]byte(data))
	var sum [sha256.Size]byte
	hex.Encode(dst[:], mac.Sum(sum[:0]))
}

// Verify returns the stream name signed into signed, or an error when the
// signature does not match (ErrBadSignature) or what was signed is not a
// string. The digest is compared in constant time, before anything signed
// is decoded, as MessageVerifier#verified does.
func (v *StreamVerifier) Verify(signed string) (string, error) {
	i := strings.LastIndex(signed, separator)
	if i <= 0 || len(signed)-i-len(separator) != 2*sha256.Size {
		return "", ErrBadSignature
	}
	data, got := signed[:i], signed[i+len(separator):]
	var want [2 * sha256.Size]byte
	v.digest(&want, data)
	if !hmac.Equal(want[:], []byte(got)) {
		return "", ErrBadSignature
	}
	js, err := decodeBase64(data)
	if err != nil {
		return "", fmt.Errorf("signed stream name: data is not Base64: %w", err)
	}
	var name string
	if len(js) == 0 || js[0] != '"' || json.Unmarshal(js, &name) != nil {
		return "", fmt.Errorf("signed stream name: what was signed is %.40q, not a JSON string", js)
	}
	return name, nil
}

// decodeBase64 reads the signed data as MessageVerifier does since Rails
// 7.1: strict Base64 (what turbo-rails generates), else URL-safe Base64
// with or without padding. Ruby's decoders refuse line breaks, which Go's
// skip.
func decodeBase64(data string) ([]byte, error) {
	if strings.ContainsAny(data, "\r\n") {
		return nil, errors.New("line break")
	}
	js, err := base64.StdEncoding.Strict().DecodeString(data)
	if err == nil {
		return js, nil
	}
	if js, urlErr := base64.RawURLEncoding.Strict().DecodeString(strings.TrimRight(data, "=")); urlErr == nil {
		return js, nil
	}
	return nil, err
}

// The channels the fast lane knows.
const (
	// TurboChannel is turbo-rails' channel, behind turbo_stream_from and
	// <turbo-cable-stream-source>.
	TurboChannel = "Turbo::StreamsChannel"
	// PubSubChannel is AnyCable's channel for signed and public streams
	// (@anycable/web's streamFromSigned and streamFrom).
	PubSubChannel = "$pubsub"
)

// Lane is where a subscribe goes.
type Lane uint8

const (
	// ToApp: the subscribe is the app's to answer, as an event.
	ToApp Lane = iota
	// Confirm: Cablecar confirms it and streams from Verdict.Stream.
	Confirm
	// Reject: Cablecar rejects it (a bad signature).
	Reject
)

// Verdict is what the fast lane decided about one subscribe.
type Verdict struct {
	Lane   Lane
	Stream string // for Confirm
	Err    error  // for Reject: why, for a debug log; it never holds a secret
}

// FastLane answers the subscribes Cablecar can answer alone (SPEC §9):
// Turbo::StreamsChannel and $pubsub with a signed stream name when a
// secret is set, and $pubsub with a public stream name when public
// streams are on. It is safe for concurrent use.
type FastLane struct {
	verifier *StreamVerifier // nil: no turbo_streams_secret
	public   bool
}

// NewFastLane is the lane for actioncable.turbo_streams_secret ("" leaves
// signed streams to the app) and actioncable.public_streams.
func NewFastLane(turboStreamsSecret string, publicStreams bool) *FastLane {
	l := &FastLane{public: publicStreams}
	if turboStreamsSecret != "" {
		l.verifier = NewStreamVerifier(turboStreamsSecret)
	}
	return l
}

// Decide reads a subscribe's identifier, the JSON text of its channel and
// params, and says where the subscribe goes. An identifier that is not a
// JSON object, or names another channel, is the app's. A confirmed stream
// name must also be a valid Cablecar channel name (SPEC §4), or it is
// rejected: Cablecar could not stream from it.
func (l *FastLane) Decide(identifier string) Verdict {
	if l.verifier == nil && !l.public {
		return Verdict{}
	}
	params, ok := identifierFields(identifier)
	if !ok {
		return Verdict{}
	}
	channel, _ := stringField(params.channel)
	if channel != TurboChannel && channel != PubSubChannel {
		return Verdict{}
	}
	if signed := params.signed; signed != nil && l.verifier != nil {
		name, ok := stringField(signed)
		if !ok {
			return Verdict{Lane: Reject, Err: errors.New("signed_stream_name is not a string")}
		}
		return l.confirm(l.verifier.Verify(name))
	}
	if channel == TurboChannel {
		if l.verifier == nil {
			return Verdict{}
		}
		// turbo-rails rejects a subscribe whose name does not verify, a
		// missing one included.
		return Verdict{Lane: Reject, Err: errors.New("no signed_stream_name")}
	}
	if name, ok := stringField(params.stream); ok && l.public {
		return l.confirm(name, nil)
	}
	return Verdict{}
}

// laneFields are the members of an identifier the fast lane reads; nil
// when absent.
type laneFields struct {
	channel, signed, stream json.RawMessage
}

// identifierFields reads them, without a map when it can (members.go);
// false when identifier is not a JSON object.
func identifierFields(identifier string) (laneFields, bool) {
	var f laneFields
	var ms [maxMembers]member
	if n, ok := scanMembers([]byte(identifier), &ms); ok {
		for _, m := range ms[:n] {
			switch string(m.key) {
			case "channel":
				f.channel = m.value
			case "signed_stream_name":
				f.signed = m.value
			case "stream_name":
				f.stream = m.value
			}
		}
		return f, true
	}
	var params map[string]json.RawMessage
	if json.Unmarshal([]byte(identifier), &params) != nil || params == nil {
		return f, false
	}
	return laneFields{channel: params["channel"], signed: params["signed_stream_name"], stream: params["stream_name"]}, true
}

func (l *FastLane) confirm(stream string, err error) Verdict {
	if err == nil {
		err = pubsub.ValidateChannel(stream)
	}
	if err != nil {
		return Verdict{Lane: Reject, Err: err}
	}
	return Verdict{Lane: Confirm, Stream: stream}
}
