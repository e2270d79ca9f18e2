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
// Subscriptions are reference-counted: Subscribe and Unsubscribe are called
// once per connection joining or leaving a channel, and the node stays
// subscribed while the count is above zero. Subscribe returns only once the
// subscription is in effect, so a message published after it returns is
// delivered.
type Broker interface {
	// Start begins delivering to sink. It is called once, before any other
	// method.
	Start(ctx context.Context, sink Sink) error
	Subscribe(ctx context.Context, channel string) error
	Unsubscribe(ctx context.Context, channel string) error
	// Publish sends every message, in order, to every node subscribed to
	// its channel (this one included).
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
