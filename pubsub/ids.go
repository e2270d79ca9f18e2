package pubsub

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
)

// Connection ids are "c_" + the node id (8 characters) + 16 random
// characters: unique across nodes and restarts without coordination, and a
// broker can read off an id which node holds the connection, so that a
// send or close for it goes to that node alone. Apps treat ids as opaque.
const (
	nodeIDLen = 8
	connIDLen = 2 + nodeIDLen + 16
)

// NewNodeID returns a random node id (48 bits, base64url): every process
// is a new node.
func NewNodeID() string {
	var b [6]byte
	mustRead(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// NewConnectionID returns a new id for a connection on node.
func NewConnectionID(node string) string {
	var b [12]byte
	mustRead(b[:])
	return "c_" + node + base64.RawURLEncoding.EncodeToString(b[:])
}

// NodeOf returns the node that holds connection id, or false when id is
// not one Cablecar made.
func NodeOf(id string) (string, bool) {
	if len(id) != connIDLen || !strings.HasPrefix(id, "c_") {
		return "", false
	}
	return id[2 : 2+nodeIDLen], true
}

func mustRead(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic("cablecar: no randomness: " + err.Error())
	}
}
