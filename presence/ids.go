package presence

import (
	"crypto/rand"
	"encoding/base64"
)

// NewEventID is a join's or leave's id: 128 random bits, made once, where
// the event is decided, and kept with it wherever it is posted from.
func NewEventID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("cablecar: no randomness: " + err.Error())
	}
	return "p_" + base64.RawURLEncoding.EncodeToString(b[:])
}
