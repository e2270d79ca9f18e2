package actioncable

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// What @rails/actioncable and @anycable/web send, read into Commands.
func TestParseCommand(t *testing.T) {
	const id = `{"channel":"ChatChannel","room":"1"}`
	idJSON, _ := json.Marshal(id)
	ident := string(idJSON)
	tests := []struct {
		name  string
		frame string
		want  Command
	}{
		{"subscribe", `{"command":"subscribe","identifier":` + ident + `}`,
			Command{Kind: Subscribe, Identifier: id}},
		{"message", `{"command":"message","identifier":` + ident + `,"data":"{\"action\":\"speak\",\"text\":\"hi\"}"}`,
			Command{Kind: Message, Identifier: id, Data: `{"action":"speak","text":"hi"}`}},
		{"unsubscribe", `{"command":"unsubscribe","identifier":` + ident + `}`,
			Command{Kind: Unsubscribe, Identifier: id}},
		{"pong", `{"command":"pong"}`, Command{Kind: Pong}},
		{"pong ignores an identifier", `{"command":"pong","identifier":7}`, Command{Kind: Pong}},
		{"unknown keys ignored", `{"command":"unsubscribe","identifier":"x","extra":[1,2],"data":5}`,
			Command{Kind: Unsubscribe, Identifier: "x"}},
		{"last key wins", `{"command":"message","command":"unsubscribe","identifier":"x"}`,
			Command{Kind: Unsubscribe, Identifier: "x"}},
		{"identifier kept verbatim, not re-encoded", `{"command":"subscribe","identifier":"{ \"channel\" : \"A\" }"}`,
			Command{Kind: Subscribe, Identifier: `{ "channel" : "A" }`}},
		{"ext subscribe with history", `{"command":"subscribe","identifier":"x","history":{"since":1700000000,"streams":{"chat_1":{"epoch":"e1","offset":42}}}}`,
			Command{Kind: Subscribe, Identifier: "x", History: &HistoryRequest{Since: 1700000000,
				Streams: map[string]Position{"chat_1": {Epoch: "e1", Offset: 42}}}}},
		{"ext subscribe, since only", `{"command":"subscribe","identifier":"x","history":{"since":1700000000,"streams":{}}}`,
			Command{Kind: Subscribe, Identifier: "x", History: &HistoryRequest{Since: 1700000000}}},
		{"since with a fraction", `{"command":"history","identifier":"x","history":{"since":1700000000.75}}`,
			Command{Kind: History, Identifier: "x", History: &HistoryRequest{Since: 1700000000}}},
		{"null history is none", `{"command":"subscribe","identifier":"x","history":null}`,
			Command{Kind: Subscribe, Identifier: "x"}},
		{"history", `{"command":"history","identifier":"x","history":{"streams":{"s":{"epoch":"e","offset":0}}}}`,
			Command{Kind: History, Identifier: "x", History: &HistoryRequest{Streams: map[string]Position{"s": {Epoch: "e"}}}}},
		{"join", `{"command":"join","identifier":"x","presence":{"id":"user-42","info":{"name":"Ann"}}}`,
			Command{Kind: Join, Identifier: "x", Presence: &PresenceInfo{ID: "user-42", Info: json.RawMessage(`{"name":"Ann"}`)}}},
		{"join without info", `{"command":"join","identifier":"x","presence":{"id":"u"}}`,
			Command{Kind: Join, Identifier: "x", Presence: &PresenceInfo{ID: "u"}}},
		{"leave", `{"command":"leave","identifier":"x"}`, Command{Kind: Leave, Identifier: "x"}},
		{"leave with presence", `{"command":"leave","identifier":"x","presence":{"id":null}}`,
			Command{Kind: Leave, Identifier: "x", Presence: &PresenceInfo{}}},
		{"presence", `{"command":"presence","identifier":"x","data":"ignored"}`, Command{Kind: Presence, Identifier: "x"}},
		{"subscribe with presence", `{"command":"subscribe","identifier":"x","presence":{"id":"u","info":"i"}}`,
			Command{Kind: Subscribe, Identifier: "x", Presence: &PresenceInfo{ID: "u", Info: json.RawMessage(`"i"`)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCommand([]byte(tt.frame))
			if err != nil {
				t.Fatalf("ParseCommand(%s): %v", tt.frame, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseCommand(%s)\n got %#v\nwant %#v", tt.frame, got, tt.want)
			}
			back, err := ParseCommand(got.AppendJSON(nil))
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Errorf("round trip through %s: %#v, %v", got.AppendJSON(nil), back, err)
			}
		})
	}
}

// Malformed commands are refused with the reason the caller counts.
func TestParseCommandMalformed(t *testing.T) {
	tests := []struct {
		name  string
		frame string
		want  Malformed
	}{
		{"not JSON", `subscribe me`, NotJSON},
		{"truncated", `{"command":"subscribe"`, NotJSON},
		{"array", `[{"command":"subscribe"}]`, NotJSON},
		{"string", `"subscribe"`, NotJSON},
		{"null", `null`, NotJSON},
		{"empty", ``, NotJSON},
		{"no command", `{"identifier":"x"}`, UnknownCommand},
		{"command not a string", `{"command":1,"identifier":"x"}`, UnknownCommand},
		{"unknown command", `{"command":"whisper","identifier":"x","data":{}}`, UnknownCommand},
		{"command in another case", `{"command":"Subscribe","identifier":"x"}`, UnknownCommand},
		{"key in another case", `{"Command":"subscribe","identifier":"x"}`, UnknownCommand},
		{"no identifier", `{"command":"subscribe"}`, BadIdentifier},
		{"identifier an object", `{"command":"subscribe","identifier":{"channel":"A"}}`, BadIdentifier},
		{"identifier a number", `{"command":"unsubscribe","identifier":1}`, BadIdentifier},
		{"identifier null", `{"command":"message","identifier":null,"data":"{}"}`, BadIdentifier},
		{"identifier empty", `{"command":"subscribe","identifier":""}`, BadIdentifier},
		{"identifier blank", `{"command":"subscribe","identifier":" \t\n"}`, BadIdentifier},
		{"message without data", `{"command":"message","identifier":"x"}`, BadData},
		{"data an object", `{"command":"message","identifier":"x","data":{"action":"a"}}`, BadData},
		{"data not JSON text", `{"command":"message","identifier":"x","data":"speak"}`, BadData},
		{"data empty", `{"command":"message","identifier":"x","data":""}`, BadData},
		{"history command without history", `{"command":"history","identifier":"x"}`, BadHistory},
		{"history not an object", `{"command":"subscribe","identifier":"x","history":[1]}`, BadHistory},
		{"since a string", `{"command":"history","identifier":"x","history":{"since":"1700000000"}}`, BadHistory},
		{"since negative", `{"command":"history","identifier":"x","history":{"since":-1}}`, BadHistory},
		{"since too big", `{"command":"history","identifier":"x","history":{"since":1e300}}`, BadHistory},
		{"offset negative", `{"command":"history","identifier":"x","history":{"streams":{"s":{"epoch":"e","offset":-1}}}}`, BadHistory},
		{"epoch a number", `{"command":"history","identifier":"x","history":{"streams":{"s":{"epoch":1,"offset":1}}}}`, BadHistory},
		{"streams a list", `{"command":"history","identifier":"x","history":{"streams":["s"]}}`, BadHistory},
		{"join without presence", `{"command":"join","identifier":"x"}`, BadPresence},
		{"join without id", `{"command":"join","identifier":"x","presence":{"info":1}}`, BadPresence},
		{"presence id a number", `{"command":"join","identifier":"x","presence":{"id":42}}`, BadPresence},
		{"presence not an object", `{"command":"leave","identifier":"x","presence":"u"}`, BadPresence},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCommand([]byte(tt.frame))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("ParseCommand(%s) = %v, want a *ParseError", tt.frame, err)
			}
			if pe.Why != tt.want {
				t.Errorf("ParseCommand(%s): %v, want %v", tt.frame, pe, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "actioncable: malformed command ("+tt.want.String()+")") {
				t.Errorf("message %q", err)
			}
		})
	}
}

// Every reason has a metric-friendly name, and the error names what was
// sent without quoting a whole frame.
func TestMalformedNames(t *testing.T) {
	for m := NotJSON; m <= NotSubscribed; m++ {
		if s := m.String(); s == "" || strings.ContainsAny(s, " -") {
			t.Errorf("Malformed(%d).String() = %q", m, s)
		}
	}
	_, err := ParseCommand([]byte(`{"command":"` + strings.Repeat("x", 1000) + `"}`))
	if len(err.Error()) > 100 {
		t.Errorf("error quotes too much: %d bytes", len(err.Error()))
	}
}

func TestKindNames(t *testing.T) {
	for k := Subscribe; k <= Presence; k++ {
		if kindNamed(k.String()) != k {
			t.Errorf("Kind %d: name %q does not read back", k, k.String())
		}
	}
	if Kind(0).String() != "" || Kind(99).String() != "" || kindNamed("") != 0 {
		t.Error("no kind has an empty name")
	}
}

func BenchmarkParseCommand(b *testing.B) {
	frame := []byte(`{"command":"message","identifier":"{\"channel\":\"ChatChannel\",\"room\":\"1\"}","data":"{\"action\":\"speak\",\"text\":\"hello\"}"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseCommand(frame); err != nil {
			b.Fatal(err)
		}
	}
}
