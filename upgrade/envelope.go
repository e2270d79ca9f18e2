package upgrade

import (
	"encoding/base64"
	"strconv"

	"github.com/cablecar/cablecar/internal/jsontext"
	"github.com/cablecar/cablecar/pubsub"
)

// The JSON envelope of raw connections whose accept said
// Cablecar-Envelope: json (SPEC §10): each broadcast arrives as
//
//	{"channel":C,"epoch":E,"offset":O,"data":"<payload as a JSON string>"}
//
// with "binary":true and the payload in base64 for a binary one, and no
// epoch or offset for a message that was not recorded. It is always a
// text frame, so a client can read the position of any message.

// appendEnvelopeJSON appends m's envelope to dst.
func appendEnvelopeJSON(dst []byte, m *pubsub.Message) []byte {
	dst = append(dst, `{"channel":`...)
	dst = jsontext.AppendString(dst, m.Channel)
	if m.Epoch != "" {
		dst = append(dst, `,"epoch":`...)
		dst = jsontext.AppendString(dst, m.Epoch)
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendUint(dst, m.Offset, 10)
	}
	dst = append(dst, `,"data":`...)
	if m.Binary {
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, m.Data)
		return append(dst, `","binary":true}`...)
	}
	dst = jsontext.AppendString(dst, string(m.Data))
	return append(dst, '}')
}

// envelopeOut is m as one envelope frame.
func envelopeOut(m *pubsub.Message) outgoing {
	payload := appendEnvelopeJSON(make([]byte, 0, len(m.Data)+96), m)
	return outgoing{frame: newFrame(false, payload), size: len(payload)}
}

// plainOut is m as it goes to a connection without the envelope.
func plainOut(m *pubsub.Message) outgoing {
	return outgoing{frame: newFrame(m.Binary, m.Data), size: len(m.Data)}
}
