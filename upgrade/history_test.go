package upgrade

import (
	"testing"

	"github.com/cablecar/cablecar/pubsub"
)

func TestCutSince(t *testing.T) {
	for _, tt := range []struct {
		in, ch string
		since  *pubsub.Position
		bad    bool
	}{
		{in: "room:1", ch: "room:1"},
		{in: "room:1; since=abc_-9:42", ch: "room:1", since: &pubsub.Position{Epoch: "abc_-9", Offset: 42}},
		{in: "room:1;since=E:0", ch: "room:1", since: &pubsub.Position{Epoch: "E", Offset: 0}},
		{in: "room:1; since=E", bad: true},
		{in: "room:1; since=:1", bad: true},
		{in: "room:1; since=E:-1", bad: true},
		{in: "room:1; since=a.b:1", bad: true},
		{in: "room:1; from=E:1", bad: true},
	} {
		ch, since, err := cutSince(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("cutSince(%q) = %q, %v; want an error", tt.in, ch, since)
			}
			continue
		}
		if err != nil || ch != tt.ch || (since == nil) != (tt.since == nil) || since != nil && *since != *tt.since {
			t.Errorf("cutSince(%q) = %q, %v, %v; want %q, %v", tt.in, ch, since, err, tt.ch, tt.since)
		}
	}
}

func TestEnvelopeJSON(t *testing.T) {
	for _, tt := range []struct {
		m    pubsub.Message
		want string
	}{
		{pubsub.Message{Channel: "room:1", Data: []byte(`{"a":"é\n"}`), Epoch: "E1", Offset: 7},
			`{"channel":"room:1","epoch":"E1","offset":7,"data":"{\"a\":\"é\\n\"}"}`},
		{pubsub.Message{Channel: "r", Data: []byte{0, 1, 0xff}, Binary: true},
			`{"channel":"r","data":"AAH/","binary":true}`},
	} {
		if got := string(appendEnvelopeJSON(nil, &tt.m)); got != tt.want {
			t.Errorf("envelope of %+v:\n got %s\nwant %s", tt.m, got, tt.want)
		}
	}
}
