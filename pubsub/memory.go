package pubsub

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Errors a broker returns when it is used outside its life.
var (
	ErrNotStarted = errors.New("pubsub: broker not started")
	ErrClosed     = errors.New("pubsub: broker closed")
)

// Memory is the broker of a single node (broker.url ""): publishing is a
// call into the node's own Sink, so there is nothing to lose and nothing to
// reconnect. The zero value is not usable; call NewMemory.
//
// Publish delivers synchronously on the publisher's goroutine, so one
// publisher's messages arrive in the order it sent them. No lock is held
// while the Sink runs, so the Sink may call back into the broker.
type Memory struct {
	mu      sync.RWMutex
	sink    Sink                // set by Start, dropped by Close
	subs    map[string]struct{} // the channels the node is subscribed to
	started bool
	closed  bool
	hist    *memHistory // nil: no history (history_memory.go)
}

var _ Broker = (*Memory)(nil)

// NewMemory returns a broker for one node. Call Start before anything else.
func NewMemory() *Memory {
	return &Memory{subs: make(map[string]struct{})}
}

// Start makes sink the target of every delivery. It may be called once.
func (m *Memory) Start(_ context.Context, sink Sink) error {
	if sink == nil {
		return errors.New("pubsub: Start with a nil sink")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return ErrClosed
	case m.started:
		return errors.New("pubsub: broker already started")
	}
	m.sink, m.started = sink, true
	return nil
}

// usable reports why the broker cannot be used; the caller holds mu.
func (m *Memory) usable() error {
	switch {
	case m.closed:
		return ErrClosed
	case !m.started:
		return ErrNotStarted
	}
	return nil
}

// Subscribe subscribes the node to channels. Nothing here blocks, so ctx
// is not consulted. Every name is checked first: a call with one bad name
// subscribes none.
func (m *Memory) Subscribe(_ context.Context, channels ...string) error {
	for _, ch := range channels {
		if err := ValidateChannel(ch); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	for _, ch := range channels {
		m.subs[ch] = struct{}{}
	}
	return nil
}

// Unsubscribe ends the node's subscription to channels; one it does not
// hold is no error.
func (m *Memory) Unsubscribe(_ context.Context, channels ...string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	for _, ch := range channels {
		delete(m.subs, ch)
	}
	return nil
}

// Publish hands each message whose channel has a subscriber to the sink, in
// order, before returning. Every channel is checked first, so a call with
// one bad name delivers nothing rather than half of its messages.
func (m *Memory) Publish(_ context.Context, msgs ...Message) error {
	for i := range msgs {
		if err := ValidateChannel(msgs[i].Channel); err != nil {
			return fmt.Errorf("pubsub: message %d: %w", i, err)
		}
	}
	for i := range msgs {
		// The lock is taken per message, not held across Deliver, so that a
		// sink which subscribes or unsubscribes in response cannot deadlock
		// and a slow sink does not stall other publishers' subscribes.
		m.mu.RLock()
		err := m.usable()
		_, subscribed := m.subs[msgs[i].Channel]
		sink := m.sink
		m.mu.RUnlock()
		if err != nil {
			return err
		}
		if m.hist != nil && msgs[i].Close == nil && m.hist.Records(msgs[i].Channel) {
			// Whether the node is subscribed is asked again with the ring
			// locked: a subscribe that came before a reader's look at the
			// history must see every message that look did not.
			m.hist.record(&msgs[i], func(msg Message) {
				m.mu.RLock()
				_, subscribed := m.subs[msg.Channel]
				live := m.sink != nil
				m.mu.RUnlock()
				if subscribed && live {
					sink.Deliver(msg)
				}
			})
			continue
		}
		if subscribed {
			sink.Deliver(msgs[i])
		}
	}
	return nil
}

// Direct hands cmd to the sink: on one node, the sink is the only place the
// connection can be.
func (m *Memory) Direct(_ context.Context, cmd Command) error {
	if cmd.Kind != CommandSend && cmd.Kind != CommandClose {
		return fmt.Errorf("pubsub: unknown command kind %d", cmd.Kind)
	}
	m.mu.RLock()
	err := m.usable()
	sink := m.sink
	m.mu.RUnlock()
	if err != nil {
		return err
	}
	if !sink.Execute(cmd) {
		return ErrNoConnection
	}
	return nil
}

// Ready is nil between Start and Close.
func (m *Memory) Ready(context.Context) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.usable()
}

// Close stops deliveries: no Deliver or Execute starts after it returns,
// though one already running in another goroutine may still finish. Closing
// twice is harmless.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.sink = nil
	clear(m.subs)
	return nil
}
