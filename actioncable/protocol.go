// Package actioncable is the ActionCable wire protocol as Cablecar speaks
// it (SPEC §9): what @rails/actioncable, Turbo Streams and @anycable/web
// send (ParseCommand), the frames they expect back (Append*, Broadcast),
// the Turbo Streams fast lane that confirms signed stream names without
// asking the app (FastLane), and which refused handshakes are completed
// with a disconnect rather than a bare status (RefusalProtocol).
//
// It holds no connection state and does no IO: the connection code in
// upgrade decides when to call it. It must not import upgrade or callback,
// so that either can use it.
package actioncable

import "strings"

// Protocol is an ActionCable subprotocol Cablecar knows.
type Protocol uint8

const (
	// V1 is actioncable-v1-json, what @rails/actioncable offers.
	V1 Protocol = iota + 1
	// Ext is actioncable-v1-ext-json, AnyCable's extended protocol
	// (@anycable/web: history, session restore, presence; SPEC §10, §11).
	Ext
)

// The subprotocol names on the wire.
const (
	V1Name  = "actioncable-v1-json"
	ExtName = "actioncable-v1-ext-json"
)

// family is the prefix every ActionCable subprotocol shares, the ones
// Cablecar does not speak included (@rails/actioncable also offers
// actioncable-unsupported, so that a server that speaks none of its
// protocols still picks one and the client can tell).
const family = "actioncable-"

// bearerPrefix marks a Sec-WebSocket-Protocol entry that carries a JWT
// (SPEC §6): a token, never a protocol, so it is no offer.
const bearerPrefix = "bearer."

// String is the subprotocol's name on the wire.
func (p Protocol) String() string {
	switch p {
	case V1:
		return V1Name
	case Ext:
		return ExtName
	}
	return ""
}

// ParseProtocol names the protocol an accept chose (its
// Sec-WebSocket-Protocol), or false when it is not an ActionCable
// protocol Cablecar speaks. Subprotocol names are case-sensitive
// (RFC 6455 §4.1).
func ParseProtocol(name string, ext bool) (Protocol, bool) {
	switch {
	case name == V1Name:
		return V1, true
	case name == ExtName && ext:
		return Ext, true
	}
	return 0, false
}

// RefusalProtocol decides whether a refused handshake gets SPEC §9's
// refusal form (101, a disconnect frame, a close) rather than the bare
// status: only when every subprotocol the client offered is an
// ActionCable one and one of them is spoken here, for @rails/actioncable
// retries for ever after a failed handshake but stops after a disconnect
// with reconnect false. It returns the protocol to name in the 101: the
// first spoken one in the client's order (RFC 6455 lists offers by
// preference). values are the request's Sec-WebSocket-Protocol header
// values, each a comma-separated list; bearer.<token> entries carry a
// token, not a protocol, and are skipped. ext says whether Ext is spoken.
func RefusalProtocol(values []string, ext bool) (Protocol, bool) {
	var chosen Protocol
	for _, v := range values {
		for rest := v; rest != ""; {
			var entry string
			entry, rest, _ = strings.Cut(rest, ",")
			entry = strings.Trim(entry, " \t")
			switch {
			case entry == "" || strings.HasPrefix(entry, bearerPrefix):
				continue
			case !strings.HasPrefix(entry, family):
				return 0, false
			}
			if p, ok := ParseProtocol(entry, ext); ok && chosen == 0 {
				chosen = p
			}
		}
	}
	return chosen, chosen != 0
}
