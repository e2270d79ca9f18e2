package pubsub

import (
	"reflect"
	"testing"
)

// Commands cross nodes whole: an ActionCable send's identifier and a
// close's "do not reconnect" included (SPEC §9), and a plain send or close
// is encoded as before them.
func TestCommandEnvelopeRoundTrip(t *testing.T) {
	for _, cmd := range []Command{
		{Kind: CommandSend, Connection: "c1", Data: []byte("hi")},
		{Kind: CommandSend, Connection: "c1", Data: []byte{0, 0xff}, Binary: true},
		{Kind: CommandSend, Connection: "c1", Data: []byte(`{"a":1}`), Identifier: `{"channel":"ChatChannel"}`},
		{Kind: CommandSend, Connection: "c1", Data: []byte{}, Identifier: "I"},
		{Kind: CommandClose, Connection: "c1", Code: 4000, Reason: "bye"},
		{Kind: CommandClose, Connection: "c1", Code: 4000, Reason: "bye", NoReconnect: true},
	} {
		got, err := decodeCommand(encodeCommand(&cmd))
		if err != nil {
			t.Fatalf("%+v: %v", cmd, err)
		}
		if len(got.Data) == 0 && len(cmd.Data) == 0 {
			got.Data = cmd.Data
		}
		if !reflect.DeepEqual(got, cmd) {
			t.Fatalf("got %+v, want %+v", got, cmd)
		}
	}
	plain := encodeCommand(&Command{Kind: CommandSend, Connection: "c1", Data: []byte("hi")})
	if want := "C1s\x00\x02c1hi"; string(plain) != want {
		t.Fatalf("a plain send is encoded %q, want %q as before", plain, want)
	}
	// An identifier whose length runs past the envelope is refused.
	bad := []byte("C1s\x04\x02c1\x09ab")
	if _, err := decodeCommand(bad); err == nil {
		t.Fatal("a truncated identifier was accepted")
	}
}

// A close of a channel's subscribers travels on the broadcast channel, in
// its own kind, whole; a broadcast is encoded as before it, and a
// broadcast channel still refuses a command's kind.
func TestChannelCloseEnvelopeRoundTrip(t *testing.T) {
	for _, m := range []Message{
		{Close: &ChannelClose{Code: 4000, Reason: "bye"}},
		{Close: &ChannelClose{Code: 1000, NoReconnect: true}},
	} {
		b := encodeMessage(&m)
		if b[2] != kindCloseAll {
			t.Fatalf("%+v encoded as kind %q, want 'k'", m.Close, b[2])
		}
		got, err := decodeMessage(b)
		if err != nil {
			t.Fatalf("%+v: %v", m.Close, err)
		}
		if got.Close == nil || *got.Close != *m.Close || len(got.Data) != 0 {
			t.Fatalf("got %+v, want %+v", got, m)
		}
	}
	if got := encodeMessage(&Message{Data: []byte("hi"), Except: "c1"}); string(got) != "C1m\x00\x02c1hi" {
		t.Fatalf("a broadcast is encoded %q, want as before", got)
	}
	if _, err := decodeMessage(encodeCommand(&Command{Kind: CommandClose, Connection: "c1", Code: 4000})); err == nil {
		t.Fatal("a connection's close was accepted on a broadcast channel")
	}
}
