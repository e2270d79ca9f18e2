package callback

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseReplyPresence(t *testing.T) {
	r, err := ParseReply([]byte("application/json"), []byte(`{"presence":{"join":[{"channel":"room:1","id":"u1","info":{ "a" : 1 }},{"identifier":"{\"channel\":\"C\"}","id":"u2"}],"leave":["room:2"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	p := r.Presence
	if p == nil || len(p.Join) != 2 || p.Join[0].Channel != "room:1" || string(p.Join[0].Info) != `{"a":1}` ||
		p.Join[1].Identifier != `{"channel":"C"}` || string(p.Join[1].Info) != "null" || len(p.Leave) != 1 || p.Leave[0] != "room:2" {
		t.Fatalf("presence %+v", p)
	}
	for _, bad := range []string{
		`{"presence":[]}`,
		`{"presence":{"join":[{"id":"u1"}]}}`,                            // no channel
		`{"presence":{"join":[{"channel":"a b","id":"u1"}]}}`,            // invalid channel
		`{"presence":{"join":[{"channel":"a","id":""}]}}`,                // empty id
		`{"presence":{"join":[{"channel":"a","id":"u","info":{"x":}}]}}`, // not JSON
		`{"presence":{"leave":[1]}}`,
		`{"presence":{"join":[{"channel":"a","id":"` + strings.Repeat("x", 257) + `"}]}}`,
	} {
		if _, err := ParseReply([]byte("application/json"), []byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	// One object, as the accept header Cablecar-Presence may carry.
	j, err := ParsePresenceJoins("Cablecar-Presence", json.RawMessage(` {"channel":"room:1","id":"u1"}`))
	if err != nil || len(j) != 1 || j[0].ID != "u1" {
		t.Fatalf("%+v %v", j, err)
	}
}

func TestPresenceEventBody(t *testing.T) {
	body := appendBody(nil, "c1", ConnInfo{}, []queued{{n: 3, ev: Event{Type: EventJoin, Identifier: "I", Presence: json.RawMessage(`{"id":"u1","info":{"n":1}}`)}}})
	var got struct {
		Events []map[string]any `json:"events"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	ev := got.Events[0]
	if ev["type"] != "join" || ev["identifier"] != "I" || ev["presence"].(map[string]any)["id"] != "u1" {
		t.Fatalf("event %s", body)
	}
}
