package callback

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func TestEventBody(t *testing.T) {
	info := ConnInfo{ID: `c_7"Hq`, State: "st\n\u2028é", Claims: json.RawMessage(`{"sub":"u1","n":[1,2]}`)}
	batch := []queued{
		{ev: Event{Type: EventOpen}, n: 1},
		{ev: Event{Type: EventMessage, Data: []byte("hello \"\\\x01\t<>&")}, n: 2},
		{ev: Event{Type: EventMessage, Data: []byte{0, 1, 2, 0xff}, Binary: true}, n: 3},
		{ev: Event{Type: EventMessage, Data: nil}, n: 4},
		{ev: Event{Type: EventClose, Code: 1000, Reason: "", By: "client"}, n: 5},
	}
	body := appendBody(nil, info.ID, info, batch)
	if !json.Valid(body) {
		t.Fatalf("invalid JSON: %s", body)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"connection": map[string]any{
			"id": `c_7"Hq`, "state": "st\n\u2028é", "channels": []any{},
			"claims": map[string]any{"sub": "u1", "n": []any{1.0, 2.0}},
		},
		"events": []any{
			map[string]any{"id": `c_7"Hq:1`, "type": "open"},
			map[string]any{"id": `c_7"Hq:2`, "type": "message", "data": "hello \"\\\x01\t<>&"},
			map[string]any{"id": `c_7"Hq:3`, "type": "message", "data": "AAEC/w==", "binary": true},
			map[string]any{"id": `c_7"Hq:4`, "type": "message", "data": ""},
			map[string]any{"id": `c_7"Hq:5`, "type": "close", "code": 1000.0, "reason": "", "by": "client"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %#v\nwant %#v", got, want)
	}

	// Channels present, claims absent.
	body = appendBody(nil, "c", ConnInfo{Channels: []string{"room:1", "b"}}, batch[:1])
	if want := `{"connection":{"id":"c","state":"","channels":["room:1","b"]},"events":[{"id":"c:1","type":"open"}]}`; string(body) != want {
		t.Errorf("got  %s\nwant %s", body, want)
	}
}

// BenchmarkEventBody measures the body of one request: a single message
// (the common case: one request per message while the app keeps up) and a
// batch of ten, from a pooled buffer as the stream builds it.
//
//	go test -run - -bench EventBody -benchmem ./callback/
func BenchmarkEventBody(b *testing.B) {
	info := ConnInfo{
		ID: "c_7HqK2mZ9xY3wVbN5", State: `{"user":42,"room":"lobby"}`,
		Channels: []string{"room:1", "user:42"}, Claims: json.RawMessage(`{"sub":"42","exp":1700000000}`),
	}
	text := []byte(`{"type":"chat","body":"hello everyone, how are you today?"}`)
	one := []queued{{ev: Event{Type: EventMessage, Data: text}, n: 7}}
	var ten []queued
	for i := range 10 {
		ev := Event{Type: EventMessage, Data: text}
		if i%3 == 2 {
			ev = Event{Type: EventMessage, Data: bytes.Repeat([]byte{0xab}, 48), Binary: true}
		}
		ten = append(ten, queued{ev: ev, n: uint64(i + 1)})
	}
	for _, bc := range []struct {
		name  string
		batch []queued
	}{{"message", one}, {"batch10", ten}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			buf := getBody()
			*buf = appendBody(*buf, info.ID, info, bc.batch)
			b.SetBytes(int64(len(*buf)))
			putBody(buf)
			for b.Loop() {
				buf := getBody()
				*buf = appendBody(*buf, info.ID, info, bc.batch)
				putBody(buf)
			}
		})
	}
}
