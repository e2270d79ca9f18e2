package pubsub_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/pubsub/pubsubtest"
)

func TestMemoryContract(t *testing.T) {
	pubsubtest.Run(t, func(*testing.T, string) pubsub.Broker { return pubsub.NewMemory() })
}

// Before Start there is no sink to deliver to; a caller that gets the order
// wrong must see an error, not a nil-pointer panic.
func TestMemoryBeforeStart(t *testing.T) {
	ctx := t.Context()
	m := pubsub.NewMemory()
	checks := map[string]error{
		"Subscribe":   m.Subscribe(ctx, "a"),
		"Unsubscribe": m.Unsubscribe(ctx, "a"),
		"Publish":     m.Publish(ctx, pubsub.Message{Channel: "a"}),
		"Direct":      m.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: "c"}),
		"Ready":       m.Ready(ctx),
	}
	for name, err := range checks {
		if !errors.Is(err, pubsub.ErrNotStarted) {
			t.Errorf("%s before Start: %v, want ErrNotStarted", name, err)
		}
	}
	if err := m.Start(ctx, nil); err == nil {
		t.Error("Start with a nil sink succeeded")
	}
	if err := m.Start(ctx, sink{}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := m.Start(ctx, sink{}); err == nil {
		t.Error("a second Start succeeded")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Publish(ctx, pubsub.Message{Channel: "a"}); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
}

// The hub may subscribe a connection from inside Deliver (a message that
// makes a user join a room); Memory must not hold its lock across the call.
func TestMemorySinkCallsBack(t *testing.T) {
	ctx := t.Context()
	m := pubsub.NewMemory()
	s := &reentrant{m: m}
	if err := m.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := m.Subscribe(ctx, "lobby"); err != nil {
		t.Fatal(err)
	}
	if err := m.Publish(ctx, pubsub.Message{Channel: "lobby", Data: []byte("join room")}, pubsub.Message{Channel: "room", Data: []byte("hi")}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"lobby:join room", "room:hi"}; strings.Join(s.got, " ") != strings.Join(want, " ") {
		t.Errorf("delivered %q, want %q", s.got, want)
	}
	if s.err != nil {
		t.Errorf("Subscribe from inside Deliver: %v", s.err)
	}
}

type reentrant struct {
	m   *pubsub.Memory
	got []string
	err error
}

func (r *reentrant) Deliver(m pubsub.Message) {
	r.got = append(r.got, m.Channel+":"+string(m.Data))
	if string(m.Data) == "join room" {
		r.err = r.m.Subscribe(context.Background(), "room")
	}
}

func (r *reentrant) Execute(pubsub.Command) bool { return true }

func TestValidateChannel(t *testing.T) {
	tests := []struct {
		name  string
		valid bool
	}{
		{"a", true},
		{"room:1", true},
		{"user@x/y=+.-_", true},
		{"ABCxyz0189", true},
		{strings.Repeat("a", 256), true},
		{"", false},
		{strings.Repeat("a", 257), false},
		{"room 1", false},
		{"é", false},
		{"room*", false},
		{"#room", false},
		{"room\n", false},
		{"room\x00", false},
		{"room,1", false},
		{"\xff", false},
	}
	for _, tt := range tests {
		err := pubsub.ValidateChannel(tt.name)
		if (err == nil) != tt.valid {
			t.Errorf("ValidateChannel(%.40q) = %v, want valid %v", tt.name, err, tt.valid)
		}
	}
}

// sink is the cheapest Sink, so the benchmark measures the broker alone.
type sink struct{}

func (sink) Deliver(pubsub.Message)      {}
func (sink) Execute(pubsub.Command) bool { return true }

func BenchmarkMemoryPublish(b *testing.B) {
	ctx := context.Background()
	m := pubsub.NewMemory()
	if err := m.Start(ctx, sink{}); err != nil {
		b.Fatal(err)
	}
	for _, ch := range []string{"room:1", "room:2", "room:3"} {
		if err := m.Subscribe(ctx, ch); err != nil {
			b.Fatal(err)
		}
	}
	msg := pubsub.Message{Channel: "room:2", Data: []byte(`{"type":"chat","text":"hello"}`)}
	b.Run("one", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := m.Publish(ctx, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := m.Publish(ctx, msg); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func TestMemoryHistoryContract(t *testing.T) {
	pubsubtest.RunHistory(t, func(_ *testing.T, _ string, h pubsub.HistoryConfig) pubsub.Broker {
		return pubsub.NewMemory().WithHistory(h)
	})
	// With every channel recorded, the broker still keeps the whole
	// contract.
	pubsubtest.Run(t, func(*testing.T, string) pubsub.Broker {
		return pubsub.NewMemory().WithHistory(pubsub.HistoryConfig{Size: 10, TTL: time.Minute})
	})
}
