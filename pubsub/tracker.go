package pubsub

import "encoding/json"

// ConnRecord is what another node needs to post a connection's close event
// should the node holding it die (SPEC §3, by: node_lost).
type ConnRecord struct {
	ID       string          `json:"id"`
	Path     string          `json:"path"`              // the events path
	Headers  [][2]string     `json:"headers,omitempty"` // set on the event request
	State    string          `json:"state,omitempty"`
	Channels []string        `json:"channels,omitempty"`
	Claims   json.RawMessage `json:"claims,omitempty"`
	// Close is the close event its node numbered and could not deliver
	// before it shut down (SPEC §5): a survivor posts this one, same id,
	// rather than a node_lost close. nil for a node that was lost.
	Close *CloseEvent `json:"close,omitempty"`
}

// CloseEvent is a close event as its node numbered it: its id is
// "<connection id>:<N>".
type CloseEvent struct {
	N      uint64 `json:"n"`
	Code   int    `json:"code"`
	Reason string `json:"reason,omitempty"`
	By     string `json:"by"`
}

// Tracker keeps a record of this node's live connections where other nodes
// can find it. Its methods never block on the network: writes are batched.
// A nil Tracker (one node, in memory) records nothing.
type Tracker interface {
	// Track records a connection whose close event the app wants.
	Track(rec ConnRecord)
	// Update records a change of state or channels.
	Update(id, state string, channels []string)
	// Untrack forgets a connection once its close event was delivered.
	Untrack(id string)
}
