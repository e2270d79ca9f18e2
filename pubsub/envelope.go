package pubsub

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The envelope carries what a verbatim PUBLISH cannot: binary payloads,
// the connection to leave out, and commands for one node. It is sent only
// on internal channels (see redis.go), never on an app's channel, and is
// binary-safe:
//
//	byte 0    'C'  (Cablecar)
//	byte 1    '1'  (version)
//	byte 2    kind: 'm' broadcast, 's' send to a connection, 'c' close it,
//	          'k' close every subscriber of the channel (on a broadcast
//	          channel, like 'm'; added within C1: a node that predates it
//	          counts it as undecodable and drops it), 'h' a recorded
//	          broadcast (added within C1 the same way, SPEC §10: after the
//	          id, "<epoch>:<offset>\n", then the payload; history_redis.go)
//	byte 3    flags: bit 0 set = binary payload; bit 1 ('c', 'k') = the
//	          ActionCable client is told not to reconnect; bit 2 ('s') =
//	          an ActionCable identifier follows the id
//	uvarint   length of the connection id, then the id (for 'm': the
//	          connection left out, may be empty; for 'k': empty)
//	uvarint   length of the identifier, then it (for 's' with bit 2 only)
//	uvarint   close code (for 'c' and 'k' only)
//	rest      the payload (for 'c' and 'k': the close reason)
const (
	envMagic        = 'C'
	envVersion      = '1'
	kindMsg         = 'm'
	kindSend        = 's'
	kindClose       = 'c'
	kindCloseAll    = 'k'
	kindRecorded    = 'h'
	flagBinary      = 1
	flagNoReconnect = 2
	flagIdentifier  = 4
)

func encodeMessage(m *Message) []byte {
	if c := m.Close; c != nil {
		b := appendEnvelope(nil, kindCloseAll, false, "", c.Code, []byte(c.Reason))
		if c.NoReconnect {
			b[3] |= flagNoReconnect
		}
		return b
	}
	return appendEnvelope(nil, kindMsg, m.Binary, m.Except, 0, m.Data)
}

func encodeCommand(c *Command) []byte {
	if c.Kind == CommandClose {
		b := appendEnvelope(nil, kindClose, false, c.Connection, c.Code, []byte(c.Reason))
		if c.NoReconnect {
			b[3] |= flagNoReconnect
		}
		return b
	}
	if c.Identifier != "" {
		b := appendEnvelope(nil, kindSend, c.Binary, c.Connection, 0, nil)
		b[3] |= flagIdentifier
		b = binary.AppendUvarint(b, uint64(len(c.Identifier)))
		b = append(b, c.Identifier...)
		return append(b, c.Data...)
	}
	return appendEnvelope(nil, kindSend, c.Binary, c.Connection, 0, c.Data)
}

func appendEnvelope(b []byte, kind byte, bin bool, id string, code int, payload []byte) []byte {
	var flags byte
	if bin {
		flags |= flagBinary
	}
	b = append(b, envMagic, envVersion, kind, flags)
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	if kind == kindClose || kind == kindCloseAll {
		b = binary.AppendUvarint(b, uint64(code))
	}
	return append(b, payload...)
}

type envelope struct {
	kind    byte
	binary  bool
	flags   byte
	ident   string
	id      string
	code    int
	payload []byte
}

var errEnvelope = errors.New("not a Cablecar envelope")

func decodeEnvelope(b []byte) (envelope, error) {
	var e envelope
	if len(b) < 4 || b[0] != envMagic || b[1] != envVersion {
		return e, errEnvelope
	}
	e.kind, e.binary, e.flags = b[2], b[3]&flagBinary != 0, b[3]
	b = b[4:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return e, fmt.Errorf("%w: bad id length", errEnvelope)
	}
	e.id, b = string(b[k:k+int(n)]), b[k+int(n):]
	if e.kind == kindClose || e.kind == kindCloseAll {
		code, k := binary.Uvarint(b)
		if k <= 0 || code > 4999 {
			return e, fmt.Errorf("%w: bad close code", errEnvelope)
		}
		e.code, b = int(code), b[k:]
	}
	if e.kind == kindSend && e.flags&flagIdentifier != 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return e, fmt.Errorf("%w: bad identifier length", errEnvelope)
		}
		e.ident, b = string(b[k:k+int(n)]), b[k+int(n):]
	}
	e.payload = b
	return e, nil
}

func decodeMessage(b []byte) (Message, error) {
	e, err := decodeEnvelope(b)
	if err != nil {
		return Message{}, err
	}
	switch e.kind {
	case kindMsg:
		return Message{Data: e.payload, Binary: e.binary, Except: e.id}, nil
	case kindRecorded:
		return decodeRecorded(e)
	case kindCloseAll:
		return Message{Close: &ChannelClose{Code: e.code, Reason: string(e.payload),
			NoReconnect: e.flags&flagNoReconnect != 0}}, nil
	}
	return Message{}, fmt.Errorf("%w: kind %q on a broadcast channel", errEnvelope, e.kind)
}

func decodeCommand(b []byte) (Command, error) {
	e, err := decodeEnvelope(b)
	if err != nil {
		return Command{}, err
	}
	switch e.kind {
	case kindSend:
		return Command{Kind: CommandSend, Connection: e.id, Data: e.payload, Binary: e.binary, Identifier: e.ident}, nil
	case kindClose:
		return Command{Kind: CommandClose, Connection: e.id, Code: e.code, Reason: string(e.payload),
			NoReconnect: e.flags&flagNoReconnect != 0}, nil
	}
	return Command{}, fmt.Errorf("%w: kind %q on a node channel", errEnvelope, e.kind)
}
