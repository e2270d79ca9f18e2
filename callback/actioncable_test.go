package callback

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// The events of an ActionCable connection: the identifier, the perform's
// data as the JSON text sent, the identifier's channel_state (absent when
// none), and the close event's identifiers (present, even empty).
func TestActionCableEventBody(t *testing.T) {
	info := ConnInfo{ID: "c1", ChannelStates: map[string]string{`{"channel":"A"}`: "st=1"}}
	batch := []queued{
		{ev: Event{Type: EventSubscribe, Identifier: `{"channel":"A"}`}, n: 1},
		{ev: Event{Type: EventPerform, Identifier: `{"channel":"A"}`, Data: []byte(`{"action":"speak"}`)}, n: 2},
		{ev: Event{Type: EventUnsubscribe, Identifier: `{"channel":"B"}`}, n: 3},
		// Dropped before the request is built: its state rides on the event.
		{ev: Event{Type: EventUnsubscribe, Identifier: `{"channel":"C"}`, State: "st=c", HasState: true}, n: 6},
		// An unsubscribe never takes the state of a later subscription to
		// the same identifier.
		{ev: Event{Type: EventUnsubscribe, Identifier: `{"channel":"A"}`}, n: 7},
		{ev: Event{Type: EventClose, Code: 1000, By: "client", Identifiers: []string{`{"channel":"A"}`}}, n: 4},
		{ev: Event{Type: EventClose, Code: 1000, By: "client", Identifiers: []string{}}, n: 5},
	}
	var got struct {
		Events []map[string]any `json:"events"`
	}
	if err := json.Unmarshal(appendBody(nil, "c1", info, batch), &got); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"id": "c1:1", "type": "subscribe", "identifier": `{"channel":"A"}`, "channel_state": "st=1"},
		{"id": "c1:2", "type": "perform", "identifier": `{"channel":"A"}`, "data": `{"action":"speak"}`, "channel_state": "st=1"},
		{"id": "c1:3", "type": "unsubscribe", "identifier": `{"channel":"B"}`},
		{"id": "c1:6", "type": "unsubscribe", "identifier": `{"channel":"C"}`, "channel_state": "st=c"},
		{"id": "c1:7", "type": "unsubscribe", "identifier": `{"channel":"A"}`},
		{"id": "c1:4", "type": "close", "code": 1000.0, "reason": "", "by": "client", "identifiers": []any{`{"channel":"A"}`}},
		{"id": "c1:5", "type": "close", "code": 1000.0, "reason": "", "by": "client", "identifiers": []any{}},
	}
	if !reflect.DeepEqual(got.Events, want) {
		t.Fatalf("events\n got %v\nwant %v", got.Events, want)
	}
}

func TestParseActionCableReply(t *testing.T) {
	ct := []byte("application/json")
	r, err := ParseReply(ct, []byte(`{"confirm":["I1"],"reject":["I2"],
		"stream":[{"identifier":"I1","stream":"chat_1"}],
		"stop_stream":[{"identifier":"I1","stream":"chat_0"},{"identifier":"I3"}],
		"transmit":[{"identifier":"I1","message":{"any":["JSON"]}}],
		"channel_state":{"I1":"s"},
		"close":{"code":4000,"reason":"bye","reconnect":false}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &ACReply{
		Confirm:      []string{"I1"},
		Reject:       []string{"I2"},
		Stream:       []StreamRef{{"I1", "chat_1"}},
		StopStream:   []StreamRef{{"I1", "chat_0"}, {"I3", ""}},
		Transmit:     []Transmit{{"I1", json.RawMessage(`{"any":["JSON"]}`)}},
		ChannelState: map[string]string{"I1": "s"},
	}
	if !reflect.DeepEqual(r.ActionCable, want) {
		t.Fatalf("got %+v\nwant %+v", r.ActionCable, want)
	}
	if r.Close == nil || !r.Close.NoReconnect || r.Empty() {
		t.Fatalf("close %+v: want reconnect false", r.Close)
	}
	// Without reconnect, or with none of the ActionCable keys.
	r, err = ParseReply(ct, []byte(`{"close":{"code":4000}}`))
	if err != nil || r.Close.NoReconnect || r.ActionCable != nil {
		t.Fatalf("got %+v, %v: want reconnect by default and no ActionCable part", r, err)
	}
	for body, part := range map[string]string{
		`{"confirm":"I1"}`:                                                      "confirm",
		`{"confirm":[""]}`:                                                      "confirm[0]",
		`{"stream":[{"identifier":"I"}]}`:                                       "stream[0].stream",
		`{"stream":[{"identifier":"I","stream":"a b"}]}`:                        "stream[0].stream",
		`{"stop_stream":[{"stream":"s"}]}`:                                      "stop_stream[0].identifier",
		`{"transmit":[{"identifier":"I"}]}`:                                     "transmit[0].message",
		`{"channel_state":{"I":1}}`:                                             "channel_state",
		`{"channel_state":{"I":"` + strings.Repeat("x", MaxStateSize+1) + `"}}`: "channel_state",
		`{"close":{"reconnect":"no"}}`:                                          "close.reconnect",
	} {
		if _, err := ParseReply(ct, []byte(body)); err == nil || !strings.Contains(err.Error(), part) {
			t.Errorf("%.60s: err %v, want one naming %s", body, err, part)
		}
	}
}
