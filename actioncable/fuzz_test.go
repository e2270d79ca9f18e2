package actioncable

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// FuzzParseCommand: any frame is read or refused with a *ParseError,
// never a panic; a command read writes back (AppendJSON) to a frame that
// reads to the same command.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		`{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\"}"}`,
		`{"command":"message","identifier":"x","data":"{\"action\":\"a\"}"}`,
		`{"command":"unsubscribe","identifier":"x"}`,
		`{"command":"pong"}`,
		`{"command":"history","identifier":"x","history":{"since":1,"streams":{"s":{"epoch":"e","offset":3}}}}`,
		`{"command":"join","identifier":"x","presence":{"id":"u","info":{"a":[1,null]}}}`,
		`{"command":"leave","identifier":"x","presence":{"info":" \u2028 "}}`,
		`{"command":"presence","identifier":"\ud800"}`,
		`{"command":"subscribe","identifier":"x","history":{"since":1.5e3}}`,
		`{"command":"message","identifier":"x","data":"\"\\u0000\""}`,
		`null`, `[]`, `{`, `{"command":null}`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		cmd, err := ParseCommand(frame)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Why == 0 || pe.Why == NotSubscribed {
				t.Fatalf("ParseCommand(%q): error %v is not a parser's *ParseError", frame, err)
			}
			return
		}
		if cmd.Kind == 0 || (cmd.Kind != Pong && cmd.Identifier == "") {
			t.Fatalf("ParseCommand(%q) = %#v: no kind or no identifier", frame, cmd)
		}
		out := cmd.AppendJSON(nil)
		back, err := ParseCommand(out)
		if err != nil {
			t.Fatalf("%q → %#v → %s: %v", frame, cmd, out, err)
		}
		if !reflect.DeepEqual(back, cmd) {
			t.Fatalf("%q → %#v → %s → %#v", frame, cmd, out, back)
		}
	})
}

// FuzzFastLaneDecide: an identifier from the wire never panics the lane,
// and a signed name it confirms is one signed with the key.
func FuzzFastLaneDecide(f *testing.F) {
	v := NewStreamVerifier(fixedKey)
	for _, s := range []string{
		`{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + fixedVectors[0].signed + `"}`,
		`{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + v.Sign("a b") + `"}`,
		`{"channel":"$pubsub","signed_stream_name":"` + fixedVectors[3].signed + `"}`,
		`{"channel":"$pubsub","stream_name":"chat"}`,
		`{"channel":"$pubsub","signed_stream_name":"--` + fixedVectors[0].signed + `"}`,
		`{"channel":"Turbo::StreamsChannel","signed_stream_name":"=--"}`,
		`{"channel":null}`, `[]`, `x`,
	} {
		f.Add(s)
	}
	lane := NewFastLane(fixedKey, true)
	f.Fuzz(func(t *testing.T, identifier string) {
		got := lane.Decide(identifier)
		switch got.Lane {
		case Confirm:
			if got.Stream == "" || got.Err != nil {
				t.Fatalf("Decide(%q) = %+v", identifier, got)
			}
		case Reject:
			if got.Err == nil {
				t.Fatalf("Decide(%q) rejects without a reason", identifier)
			}
		}
		if got.Lane != Confirm {
			return
		}
		var params map[string]json.RawMessage
		_ = json.Unmarshal([]byte(identifier), &params)
		raw, present := params["signed_stream_name"]
		if !present {
			return
		}
		signed, _ := stringField(raw)
		if _, err := v.Verify(signed); err != nil {
			t.Fatalf("Decide(%q) confirmed %q, which does not verify: %v", identifier, got.Stream, err)
		}
	})
}
