package callback

import "encoding/json"

// What a Stream carries (stream.go): the events of SPEC §3 and §9–§11, the
// connection they are about, and how the app may refuse it for good.

// EventType is the type of an event webhook.
type EventType string

// The event types of SPEC §3.
const (
	EventOpen    EventType = "open"
	EventMessage EventType = "message"
	EventClose   EventType = "close"
)

// Event is one thing that happened on a connection.
type Event struct {
	Type   EventType
	Data   []byte // message payload (the caller hands over ownership)
	Binary bool
	Code   int    // close only
	Reason string // close only
	By     string // close only: client, app, timeout, slow, rate_limit, too_big, protocol, expired, upstream, shutdown, node_lost, error

	// ActionCable connections (SPEC §9; actioncable.go).
	Identifier  string   // subscribe, perform, unsubscribe: the subscription
	Identifiers []string // close only: the subscriptions still held; nil on other connections
	// State is the subscription's channel_state when the event was
	// queued, for an event whose subscription may be gone by the time the
	// request is built (unsubscribe: SPEC §9, an event about I carries
	// I's state); HasState says it was taken. Other events read the
	// state current when the request is built (ConnInfo.ChannelStates).
	State    string
	HasState bool

	// Recovered is an open event's "recovered" object (SPEC §10), as JSON;
	// nil → omitted.
	Recovered []byte

	// Presence is an ext join's or leave's proposal, JSON (SPEC §11).
	Presence json.RawMessage
}

// ConnInfo is the "connection" object of the JSON body, a snapshot taken
// when a request is built.
type ConnInfo struct {
	ID       string
	State    string
	Channels []string
	Claims   json.RawMessage // nil → omitted
	// ChannelStates are an ActionCable connection's channel_state per
	// identifier (SPEC §9), for the events about one; nil elsewhere.
	ChannelStates map[string]string
}

// Target is the connection a Stream delivers for.
type Target interface {
	// Info is called from the stream's goroutine before each request.
	Info() ConnInfo
	// Apply carries out the app's reply to a batch. Called from the
	// stream's goroutine, one at a time, in order.
	Apply(r *Reply)
	// Fail says the app refused the connection for good, and why. Called
	// at most once, from the stream's goroutine; the connection is
	// expected to push its close event (or End the stream) in answer,
	// which is still delivered.
	Fail(why Failure)
}

// Failure is why the app refused a connection for good.
type Failure uint8

const (
	// AppClosed: the app answered 410 Gone; the connection closes as the
	// app's decision (1000, by app).
	AppClosed Failure = iota + 1
	// AppUnavailable: retries of an open/message batch ran out; the
	// connection closes as the app's failure (1011, by upstream).
	AppUnavailable
)
