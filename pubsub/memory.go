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
	sink    Sink           // set by Start, dropped by Close
	counts  map[string]int // channel → subscribers on this node; absent when 0
	started bool
	closed  bool
}

var _ Broker = (*Memory)(nil)

// NewMemory returns a broker for one node. Call Start before anything else.
func NewMemory() *Memory {
	return &Memory{counts: make(map[string]int)}
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

// Subscribe adds one subscriber to channel. Nothing here blocks, so ctx is
// not consulted: a cancelled caller still gets a consistent count.
func (m *Memory) Subscribe(_ context.Context, channel string) error {
	if err := ValidateChannel(channel); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	m.counts[channel]++
	return nil
}

// Unsubscribe removes one subscriber from channel. Removing one that is not
// there does nothing: connection cleanup may race with a reply that already
// unsubscribed it, and a count must never go below zero.
func (m *Memory) Unsubscribe(_ context.Context, channel string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	switch n := m.counts[channel]; {
	case n > 1:
		m.counts[channel] = n - 1
	case n == 1:
		// Deleting keeps the map the size of the live channels, not of every
		// channel ever seen.
		delete(m.counts, channel)
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
		sink, subscribed := m.sink, m.counts[msgs[i].Channel] > 0
		m.mu.RUnlock()
		if err != nil {
			return err
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
	clear(m.counts)
	return nil
}
