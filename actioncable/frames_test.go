package actioncable

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/cablecar/cablecar/internal/jsontext"
)

// decode reads a frame as a browser would; the test fails on invalid JSON.
func decode(t *testing.T, frame []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(frame, &m); err != nil {
		t.Fatalf("frame %s is not a JSON object: %v", frame, err)
	}
	return m
}

// An identifier as @rails/actioncable builds it, with the characters that
// need escaping.
const ident = "{\"channel\":\"ChatChannel\",\"room\":\"a\\\"b</script>\u2028\"}"

func TestControlFrames(t *testing.T) {
	tests := []struct {
		name  string
		frame []byte
		want  map[string]any
	}{
		{"welcome", AppendWelcome(nil, Welcome{}), map[string]any{"type": "welcome"}},
		{"welcome ext", AppendWelcome(nil, Welcome{SID: "s\"1"}), map[string]any{"type": "welcome", "sid": "s\"1"}},
		{"welcome restored", AppendWelcome(nil, Welcome{SID: "s2", Restored: true, RestoredIDs: []string{ident, "b"}}),
			map[string]any{"type": "welcome", "sid": "s2", "restored": true, "restored_ids": []any{ident, "b"}}},
		{"welcome restored, no ids", AppendWelcome(nil, Welcome{SID: "s3", Restored: true}),
			map[string]any{"type": "welcome", "sid": "s3", "restored": true}},
		{"ping", AppendPing(nil, 1700000000), map[string]any{"type": "ping", "message": 1700000000.0}},
		{"confirm", AppendAck(nil, ConfirmSubscription, ident), map[string]any{"identifier": ident, "type": "confirm_subscription"}},
		{"reject", AppendAck(nil, RejectSubscription, ident), map[string]any{"identifier": ident, "type": "reject_subscription"}},
		{"confirm history", AppendAck(nil, ConfirmHistory, "x"), map[string]any{"identifier": "x", "type": "confirm_history"}},
		{"reject history", AppendAck(nil, RejectHistory, "x"), map[string]any{"identifier": "x", "type": "reject_history"}},
		{"disconnect", AppendDisconnect(nil, ReasonUnauthorized, false),
			map[string]any{"type": "disconnect", "reason": "unauthorized", "reconnect": false}},
		{"disconnect, app's reason", AppendDisconnect(nil, "bye \"now\"\n", true),
			map[string]any{"type": "disconnect", "reason": "bye \"now\"\n", "reconnect": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decode(t, tt.frame); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s decodes to %v, want %v", tt.frame, got, tt.want)
			}
		})
	}
	// Exactly what Rails sends, byte for byte, where a client might care.
	for got, want := range map[string]string{
		string(AppendWelcome(nil, Welcome{})):              `{"type":"welcome"}`,
		string(AppendPing(nil, 1700000000)):                `{"type":"ping","message":1700000000}`,
		string(AppendAck(nil, ConfirmSubscription, "x")):   `{"identifier":"x","type":"confirm_subscription"}`,
		string(AppendDisconnect(nil, "remote", false)):     `{"type":"disconnect","reason":"remote","reconnect":false}`,
		string(AppendMessage(nil, "x", []byte(`1`), true)): `{"identifier":"x","message":1}`,
	} {
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
	// The escaped line separator keeps the frame valid JavaScript too.
	if f := AppendAck(nil, ConfirmSubscription, ident); strings.Contains(string(f), "\u2028") {
		t.Errorf("U+2028 left raw in %s", f)
	}
}

// The payload goes in as JSON when it is JSON, else as a string.
func TestAppendMessage(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    any
	}{
		{"object", `{"html":"<turbo-stream action=\"append\"></turbo-stream>"}`,
			map[string]any{"html": `<turbo-stream action="append"></turbo-stream>`}},
		{"turbo stream HTML", `<turbo-stream action="append" target="messages"><template>hi</template></turbo-stream>`,
			`<turbo-stream action="append" target="messages"><template>hi</template></turbo-stream>`},
		{"JSON string", `"hello"`, "hello"},
		{"number", `42`, 42.0},
		{"null, as Rails broadcasts nil", `null`, nil},
		{"padded JSON", " [1, 2]\n", []any{1.0, 2.0}},
		{"plain text", `hello world`, "hello world"},
		{"empty", ``, ""},
		{"almost JSON", `{"a":1`, `{"a":1`},
		{"two values", `1 2`, `1 2`},
		{"control characters", "a\x00b\x1f", "a\x00b\x1f"},
		{"invalid UTF-8 inside a JSON string", "\"a\xffb\"", "\"a\uFFFDb\""},
		{"invalid UTF-8 text", "a\xffb", "a\uFFFDb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := []byte(tt.payload)
			frame := AppendMessage(nil, ident, p, IsJSON(p))
			m := decode(t, frame)
			if m["identifier"] != ident {
				t.Errorf("identifier %q, want %q", m["identifier"], ident)
			}
			if !reflect.DeepEqual(m["message"], tt.want) {
				t.Errorf("%s: message %#v, want %#v", frame, m["message"], tt.want)
			}
			if len(m) != 2 {
				t.Errorf("%s has %d keys, want 2", frame, len(m))
			}
		})
	}
}

// With room in dst, no builder allocates: a pooled buffer makes frames
// free.
func TestFramesDoNotAllocate(t *testing.T) {
	buf := make([]byte, 0, 4096)
	payload := []byte(`{"html":"<turbo-stream action=\"replace\" target=\"room_1\"></turbo-stream>"}`)
	text := []byte("<turbo-stream action=\"append\">not JSON</turbo-stream>")
	for name, build := range map[string]func(){
		"welcome": func() {
			buf = AppendWelcome(buf[:0], Welcome{SID: "sid", Restored: true, RestoredIDs: []string{ident}})
		},
		"ping":       func() { buf = AppendPing(buf[:0], 1700000000) },
		"ack":        func() { buf = AppendAck(buf[:0], RejectSubscription, ident) },
		"disconnect": func() { buf = AppendDisconnect(buf[:0], ReasonServerRestart, true) },
		"json":       func() { buf = AppendMessage(buf[:0], ident, payload, true) },
		"text":       func() { buf = AppendMessage(buf[:0], ident, text, false) },
	} {
		if n := testing.AllocsPerRun(100, build); n != 0 {
			t.Errorf("%s: %v allocations, want 0", name, n)
		}
	}
}

// One frame per identifier, shared by every connection that streams under
// it: the same bytes, built once.
func TestBroadcastSharesFrames(t *testing.T) {
	payload := []byte(`{"n":1}`)
	b := NewBroadcast(payload)
	first := b.Frame(ident)
	if n := testing.AllocsPerRun(1000, func() { _ = b.Frame(ident) }); n != 0 {
		t.Errorf("a frame already built costs %v allocations, want 0", n)
	}
	if again := b.Frame(strings.Clone(ident)); &again[0] != &first[0] {
		t.Error("the same identifier got a second frame")
	}
	if want := AppendMessage(nil, ident, payload, true); string(first) != string(want) {
		t.Errorf("frame %s, want %s", first, want)
	}
	if cap(first) != len(first) {
		t.Errorf("frame of %d bytes allocated %d: sized badly", len(first), cap(first))
	}

	// Past the inline slots, identifiers go to the map, each still built
	// once, none mixed up.
	frames := map[string][]byte{}
	for i := range 3 * listFrames {
		id := `{"channel":"C","i":` + strconv.Itoa(i) + `}`
		frames[id] = b.Frame(id)
	}
	for id, f := range frames {
		if again := b.Frame(id); &again[0] != &f[0] {
			t.Errorf("%s built twice", id)
		}
		if got := decode(t, f)["identifier"]; got != id {
			t.Errorf("frame for %s names %v", id, got)
		}
	}

	// Reset starts over and leaves frames handed out as they were.
	kept := string(first)
	b.Reset([]byte("plain text"))
	if string(first) != kept {
		t.Error("Reset changed a frame already handed out")
	}
	if got := decode(t, b.Frame(ident))["message"]; got != "plain text" {
		t.Errorf("after Reset the message is %#v", got)
	}
	if string(b.Payload()) != "plain text" {
		t.Errorf("Payload() = %q", b.Payload())
	}

	if f := b.Frame(ident); cap(f) != len(f) {
		t.Errorf("text frame of %d bytes allocated %d: sized badly", len(f), cap(f))
	}

	// The zero value is ready, with an empty payload.
	var zero Broadcast
	if got := decode(t, zero.Frame("x"))["message"]; got != "" {
		t.Errorf("zero Broadcast's message %#v, want \"\"", got)
	}
}

// What fan-out to one identifier costs per connection once the frame is
// built, next to building it for each.
func BenchmarkBroadcastFrame(b *testing.B) {
	payload := []byte(`<turbo-stream action="append" target="messages"><template><div id="message_1">hello</div></template></turbo-stream>`)
	id := `{"channel":"Turbo::StreamsChannel","signed_stream_name":"IloybGtPaTh2WVhCd0wxSnZiMjB2TVE6bWVzc2FnZXMi--d61084308e5ae084f91e7f34bad41ad37fad47e34a1ca09c2c7fb8b7261defcd"}`
	b.Run("shared", func(b *testing.B) {
		b.ReportAllocs()
		var bc Broadcast
		bc.Reset(payload)
		for b.Loop() {
			_ = bc.Frame(id)
		}
	})
	b.Run("per broadcast", func(b *testing.B) {
		b.ReportAllocs()
		var bc Broadcast
		for b.Loop() {
			bc.Reset(payload)
			_ = bc.Frame(id)
		}
	})
}

// quotedLen is exactly what AppendString writes, so frames are allocated
// at their size.
func FuzzQuotedLen(f *testing.F) {
	for _, s := range []string{"", ident, "\x00\x1f\x7f", "\xff\xfe", "\u2028\u2029", "é日本🙂", "a\xc3", "\xed\xa0\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := quotedLen(s), len(jsontext.AppendString(nil, s)); got != want {
			t.Fatalf("quotedLen(%q) = %d, AppendString writes %d", s, got, want)
		}
	})
}
