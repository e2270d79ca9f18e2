// Package pubsub carries broadcasts and per-connection commands between
// Cablecar nodes. Broker is what the WebSocket side (upgrade) needs of it;
// Memory serves one node, Redis many. Both pass the shared
// contract test in pubsub/pubsubtest.
//
// A broker knows channels and connection ids, never sockets: it hands what
// arrives to a Sink (the node's hub), which fans it out locally.
package pubsub

import (
	"context"
	"errors"
	"fmt"
)

// Message is one broadcast to a channel.
type Message struct {
	Channel string
	Data    []byte
	Binary  bool   // false: a text message
	Except  string // a connection id to leave out; "" leaves out no one
	// Close, when set, makes this no broadcast but a close of every
	// connection subscribed to Channel, on every node (admin /close with
	// "channel", SPEC §4): it travels to the nodes a broadcast to Channel
	// reaches, and Data, Binary and Except are unused.
	Close *ChannelClose
	// Epoch and Offset are the message's position in its channel's
	// history (SPEC §10, history.go); "" and 0 when it was not recorded.
	// Publish sets them in the caller's slice for what it recorded.
	Epoch  string
	Offset uint64
}

// ChannelClose is how Message.Close closes each subscriber: by: app, with
// Code and Reason; NoReconnect tells ActionCable clients not to come back
// (SPEC §9).
type ChannelClose struct {
	Code        int
	Reason      string
	NoReconnect bool
}

// CommandKind says what a Command asks of a connection.
type CommandKind uint8

const (
	// CommandSend delivers Data to the connection.
	CommandSend CommandKind = iota + 1
	// CommandClose closes the connection with Code and Reason (by: app).
	CommandClose
)

// Command is addressed to one connection, wherever it lives.
type Command struct {
	Kind       CommandKind
	Connection string
	Data       []byte
	Binary     bool
	Code       int
	Reason     string
	// ActionCable connections (SPEC §9): a send with Identifier reaches
	// that subscription as {"identifier":I,"message":…}; a close with
	// NoReconnect tells the client not to come back.
	Identifier  string
	NoReconnect bool
}

// Sink is the node side of a broker: where deliveries go. Its methods must
// not block on sockets; they are called from the broker's goroutines.
type Sink interface {
	// Deliver hands over a message published to a channel this node is
	// subscribed to.
	Deliver(m Message)
	// Execute carries out a command for a connection on this node and
	// reports whether that connection is here.
	Execute(c Command) bool
}

// Broker moves messages and commands between nodes.
//
// A broker is a pipe, not a registry of subscribers: it knows which
// channels this node is subscribed to, never who on the node is. The hub
// (upgrade) counts each channel's local subscribers and calls Subscribe
// when a channel gets its first one and Unsubscribe when it loses its last.
// Both take any number of channels, so that an accept with ten channels
// costs one round trip to the broker, not ten.
//
// Calls for one channel never overlap: the caller orders them (the hub has
// at most one in flight per channel). Calls for different channels may run
// at the same time, and a broker makes none of them wait for another's
// round trip.
type Broker interface {
	// Start begins delivering to sink. It is called once, before any other
	// method.
	Start(ctx context.Context, sink Sink) error
	// Subscribe subscribes the node to every channel and returns once all
	// of them are in effect, so that a message published after it returns
	// is delivered. A channel the node is subscribed to already stays so
	// (subscriptions are not counted). After an error some of the channels
	// may be subscribed, or become so later (a broker that is reconnecting
	// takes them when it is back): the caller tries again, or unsubscribes.
	Subscribe(ctx context.Context, channels ...string) error
	// Unsubscribe ends the node's subscription to every channel and returns
	// once nothing more published to them is delivered. A channel the node
	// is not subscribed to is no error.
	Unsubscribe(ctx context.Context, channels ...string) error
	// Publish sends every message, in order, to every node subscribed to
	// its channel (this one included). A broker keeping history records
	// the messages of the channels that keep it in the same step, and sets
	// their Epoch and Offset in msgs (the caller's slice).
	Publish(ctx context.Context, msgs ...Message) error
	// Direct sends a command to the node holding the connection. It returns
	// ErrNoConnection when the broker knows the connection is nowhere (a
	// broker that cannot know returns nil).
	Direct(ctx context.Context, cmd Command) error
	// Ready reports why the broker cannot carry messages now, or nil.
	Ready(ctx context.Context) error
	// Close stops deliveries and releases what the broker holds.
	Close() error
}

// ErrNoConnection is returned by Direct for a connection that is not open.
var ErrNoConnection = errors.New("no such connection")

// MaxChannelLen is the longest channel name, in bytes.
const MaxChannelLen = 256

// ValidateChannel returns nil for a valid channel name (SPEC §4): 1–256
// bytes of ASCII letters, digits and _ - : . @ / = +.
func ValidateChannel(name string) error {
	if name == "" {
		return errors.New("channel name is empty")
	}
	if len(name) > MaxChannelLen {
		return fmt.Errorf("channel name is %d bytes long, more than %d", len(name), MaxChannelLen)
	}
	for i := 0; i < len(name); i++ {
		if !channelByte[name[i]] {
			return fmt.Errorf("channel name %.64q has %q at byte %d: only letters, digits and _ - : . @ / = + are allowed", name, name[i], i)
		}
	}
	return nil
}

var channelByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_-:.@/=+" {
		t[c] = true
	}
	return t
}()
